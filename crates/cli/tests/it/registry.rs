//! `flotilla serve registry` as its own process, and a `flotilla serve product` that registers
//! itself there once ready: the registry runs its gRPC check and a watch sees the instance; a
//! registry restart on the same data directory still knows it; the product's SIGTERM deregisters it.

use std::time::Duration;

use futures::StreamExt;
use platform::discovery::consul::{ConsulConfig, ConsulRegistry};
use platform::discovery::{Instance, Registry};
use test_support::process::Flotilla;

use crate::{TestResult, binary};

const ANY_PORT: &str = "127.0.0.1:0";
/// Patience for the registry's first check of the instance (interval 200 ms).
const CHECK_PATIENCE: Duration = Duration::from_secs(20);

async fn registry(data_dir: &std::path::Path, addr: &str) -> Flotilla {
    Flotilla::serve(
        binary(),
        "registry",
        data_dir,
        &[
            ("FLOTILLA_REGISTRY_ADDR", addr),
            ("FLOTILLA_REGISTRY_ADMIN_ADDR", ANY_PORT),
        ],
    )
    .await
}

async fn agent_services(
    registry: std::net::SocketAddr,
) -> Result<serde_json::Value, reqwest::Error> {
    crate::install_crypto_provider();
    reqwest::get(format!("http://{registry}/v1/agent/services"))
        .await?
        .json()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_product_registers_itself_is_remembered_and_deregisters_on_sigterm() -> TestResult
{
    let registry_dir = tempfile::tempdir()?;
    let registry_process = registry(registry_dir.path(), ANY_PORT).await;
    let registry_addr = registry_process.addr("registry", "http");

    let product_dir = tempfile::tempdir()?;
    let consul_addr = registry_addr.to_string();
    let product = Flotilla::serve(
        binary(),
        "product",
        product_dir.path(),
        &[
            ("FLOTILLA_PRODUCT_GRPC_ADDR", ANY_PORT),
            ("FLOTILLA_PRODUCT_ADMIN_ADDR", ANY_PORT),
            ("JWT_SECRET", "a-shared-secret-of-at-least-32-bytes!"),
            ("CONSUL_HTTP_ADDR", consul_addr.as_str()),
            ("FLOTILLA_CHECK_INTERVAL", "200ms"),
            ("FLOTILLA_CHECK_TIMEOUT", "200ms"),
            ("FLOTILLA_DEREGISTER_DELAY", "100ms"),
        ],
    )
    .await;
    let product_addr = product.addr("product", "grpc");
    let product_admin = product.addr("product", "admin");

    let consul = ConsulRegistry::new(ConsulConfig {
        address: format!("http://{registry_addr}"),
        token: None,
    })?;
    let mut watch = consul.watch("product");
    let found: Instance = tokio::time::timeout(CHECK_PATIENCE, async {
        while let Some(instances) = watch.next().await {
            if let Some(instance) = instances.into_iter().next() {
                return Some(instance);
            }
        }
        None
    })
    .await?
    .ok_or("the watch ended")?;
    assert!(found.id.starts_with("product-"), "{}", found.id);
    assert_eq!(found.addr, product_addr);
    assert!(found.tags.contains(&"grpc".to_owned()), "{:?}", found.tags);
    assert_eq!(
        found.meta.get("admin_port"),
        Some(&product_admin.port().to_string())
    );
    assert!(found.meta.contains_key("version"));

    // A restart on the same data directory (and address) remembers the registration.
    registry_process.stop().await;
    let registry_process = registry(registry_dir.path(), &consul_addr).await;
    let services = agent_services(registry_addr).await?;
    assert_eq!(services[&found.id]["Service"], "product", "{services}");
    assert_eq!(services[&found.id]["Port"], product_addr.port());

    // SIGTERM: the product deregisters first thing, before its drain.
    product.stop().await;
    let services = agent_services(registry_addr).await?;
    assert!(services.get(&found.id).is_none(), "{services}");

    registry_process.stop().await;
    Ok(())
}
