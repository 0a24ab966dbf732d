//! `flotilla serve registry` as its own process: the Consul client registers a real product
//! service with a gRPC health check, the registry runs the check and the watch sees the instance;
//! a restart on the same data directory still knows it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use platform::discovery::consul::{ConsulConfig, ConsulRegistry};
use platform::discovery::{HealthCheck, Registration, Registry};
use test_support::process::Flotilla;

use crate::{TestResult, binary};

const ANY_PORT: &str = "127.0.0.1:0";
/// Patience for the registry's first check of the instance (interval 200 ms).
const CHECK_PATIENCE: Duration = Duration::from_secs(20);

async fn registry(data_dir: &std::path::Path) -> Flotilla {
    Flotilla::serve(
        binary(),
        "registry",
        data_dir,
        &[
            ("FLOTILLA_REGISTRY_ADDR", ANY_PORT),
            ("FLOTILLA_REGISTRY_ADMIN_ADDR", ANY_PORT),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_checks_and_reports_a_registered_service_and_remembers_it() -> TestResult {
    let registry_dir = tempfile::tempdir()?;
    let registry_process = registry(registry_dir.path()).await;
    let registry_addr = registry_process.addr("registry", "http");

    let product_dir = tempfile::tempdir()?;
    let product = Flotilla::serve(
        binary(),
        "product",
        product_dir.path(),
        &[
            ("FLOTILLA_PRODUCT_GRPC_ADDR", ANY_PORT),
            ("FLOTILLA_PRODUCT_ADMIN_ADDR", ANY_PORT),
            ("JWT_SECRET", "a-shared-secret-of-at-least-32-bytes!"),
        ],
    )
    .await;
    let product_addr = product.addr("product", "grpc");

    let consul = ConsulRegistry::new(ConsulConfig {
        address: format!("http://{registry_addr}"),
        token: None,
    })?;
    let registration = Registration {
        id: "product-test-1".into(),
        name: "product".into(),
        addr: product_addr,
        tags: vec!["grpc".into()],
        meta: BTreeMap::new(),
        check: HealthCheck {
            grpc: product_addr.to_string(),
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(1),
            deregister_critical_after: Duration::from_secs(60),
        },
    };
    consul.register(&registration).await?;
    let mut watch = consul.watch("product");
    let found = tokio::time::timeout(CHECK_PATIENCE, async {
        while let Some(instances) = watch.next().await {
            if let Some(instance) = instances.into_iter().next() {
                return Some(instance);
            }
        }
        None
    })
    .await?
    .ok_or("the watch ended")?;
    assert_eq!(
        (found.id.as_str(), found.addr),
        ("product-test-1", product_addr)
    );

    // A restart on the same data directory remembers the registration.
    registry_process.stop().await;
    let registry_process = registry(registry_dir.path()).await;
    let registry_addr = registry_process.addr("registry", "http");
    crate::install_crypto_provider();
    let services: serde_json::Value =
        reqwest::get(format!("http://{registry_addr}/v1/agent/services"))
            .await?
            .json()
            .await?;
    assert_eq!(
        services["product-test-1"]["Service"], "product",
        "{services}"
    );

    let consul = ConsulRegistry::new(ConsulConfig {
        address: format!("http://{registry_addr}"),
        token: None,
    })?;
    consul.deregister("product-test-1").await?;
    let services: serde_json::Value =
        reqwest::get(format!("http://{registry_addr}/v1/agent/services"))
            .await?
            .json()
            .await?;
    assert!(services.get("product-test-1").is_none(), "{services}");

    product.stop().await;
    registry_process.stop().await;
    Ok(())
}
