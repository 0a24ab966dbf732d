use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;

use super::*;
use crate::proto::product::v1 as product_pb;

fn loopback_config() -> ServeConfig {
    let any_port: SocketAddr = ([127, 0, 0, 1], 0).into();
    ServeConfig::new(any_port, any_port).with_drain_timeout(Duration::from_secs(5))
}

async fn health_of(addr: SocketAddr) -> Result<i32, Box<dyn std::error::Error + Send + Sync>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(response.into_inner().status)
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_health_and_runs_hooks_before_health_flips()
-> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let seen_in_hook: Arc<Mutex<Option<i32>>> = Arc::default();
    let grpc_addr: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let hook = {
        let seen_in_hook = seen_in_hook.clone();
        let grpc_addr = grpc_addr.clone();
        Box::new(move || {
            Box::pin(async move {
                let addr = grpc_addr.lock().ok().and_then(|addr| *addr);
                if let Some(addr) = addr {
                    let status = health_of(addr).await.ok();
                    if let Ok(mut seen) = seen_in_hook.lock() {
                        *seen = status;
                    }
                }
            }) as Pin<Box<dyn Future<Output = ()> + Send>>
        }) as BeforeDrain
    };
    let running = GrpcServer::new("test", loopback_config())
        .before_drain(hook)
        .spawn()
        .await?;
    let addrs = running.addrs();
    assert_ne!(
        addrs.main.port(),
        0,
        "port 0 must resolve to the bound port"
    );
    if let Ok(mut slot) = grpc_addr.lock() {
        *slot = Some(addrs.main);
    }
    assert_eq!(health_of(addrs.main).await?, WireStatus::Serving as i32);

    running.shutdown().await?;
    // The hook ran first, while health still said SERVING.
    assert_eq!(
        *seen_in_hook.lock().map_err(|e| e.to_string())?,
        Some(WireStatus::Serving as i32)
    );
    // And the listener is closed afterwards.
    assert!(tokio::net::TcpStream::connect(addrs.main).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_fails_with_the_check_reason()
-> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let failing: admin::ReadinessCheck =
        Arc::new(|| Box::pin(async { Err("database unreachable: test".to_owned()) }));
    let running = GrpcServer::new("test", loopback_config())
        .readiness_check(failing)
        .spawn()
        .await?;
    let admin = running.addrs().admin;
    let (status, body) = http_get(admin, "/ready").await?;
    assert_eq!(status, 503);
    assert!(body.contains("database unreachable: test"), "{body}");
    let (status, _) = http_get(admin, "/health").await?;
    assert_eq!(status, 200);
    running.shutdown().await?;
    Ok(())
}

/// A minimal HTTP/1.1 GET, so platform's tests need no HTTP client crate.
async fn http_get(
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, String), Box<dyn std::error::Error + Send + Sync>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or("no status line")?;
    Ok((status, response))
}

/// A minimal HTTP/1.1 GET, so platform's tests need no HTTP client crate.
#[tokio::test(flavor = "multi_thread")]
async fn draining_reports_not_serving_ends_watches_and_is_not_ready()
-> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let config = ServeConfig {
        drain_timeout: Duration::from_secs(5),
        ..loopback_config()
    };
    let running = GrpcServer::new("test", config).spawn().await?;
    let addrs = running.addrs();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", addrs.main))?
        .connect()
        .await?;
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(
        watch.message().await?.map(|m| m.status),
        Some(WireStatus::Serving as i32)
    );
    // A reflection stream whose client keeps its side open is an in-flight call that holds the drain.
    let (requests, request_stream) = tokio::sync::mpsc::channel(1);
    requests
        .send(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        })
        .await?;
    let mut reflection = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(request_stream))
        .await?
        .into_inner();
    assert!(reflection.message().await?.is_some());

    let stop = running.stop_token();
    let shutdown = tokio::spawn(running.shutdown());
    stop.cancel();
    assert_eq!(
        watch.message().await?.map(|m| m.status),
        Some(WireStatus::NotServing as i32)
    );
    assert_eq!(
        watch.message().await?,
        None,
        "the watch ends after NOT_SERVING instead of holding the drain"
    );
    let (status, body) = http_get(addrs.admin, "/ready").await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert!(
        !shutdown.is_finished(),
        "the in-flight reflection stream holds the drain"
    );
    drop(requests);
    shutdown.await??;
    Ok(())
}

/// A product service whose `GetProduct` reports that it started, then answers once the test adds
/// a permit to `gate`; `ListProducts` answers at once. Counts the `GetProduct` calls that reached
/// it, so a test can tell an injected fault from the handler's own answer.
#[derive(Clone)]
struct HeldProducts {
    gate: Arc<tokio::sync::Semaphore>,
    entered: Arc<tokio::sync::Notify>,
    reached: Arc<std::sync::atomic::AtomicUsize>,
}

impl HeldProducts {
    fn new() -> Self {
        Self {
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            entered: Arc::default(),
            reached: Arc::default(),
        }
    }

    fn reached(&self) -> usize {
        self.reached.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl product_pb::product_service_server::ProductService for HeldProducts {
    async fn get_product(
        &self,
        request: tonic::Request<product_pb::GetProductRequest>,
    ) -> Result<tonic::Response<product_pb::Product>, tonic::Status> {
        self.reached
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.entered.notify_one();
        let permit = self
            .gate
            .acquire()
            .await
            .map_err(|_| tonic::Status::internal("gate closed"))?;
        permit.forget();
        Ok(tonic::Response::new(product_pb::Product {
            id: request.into_inner().id,
            ..product_pb::Product::default()
        }))
    }

    async fn list_products(
        &self,
        _: tonic::Request<product_pb::ListProductsRequest>,
    ) -> Result<tonic::Response<product_pb::ListProductsResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            product_pb::ListProductsResponse::default(),
        ))
    }

    async fn create_product(
        &self,
        _: tonic::Request<product_pb::CreateProductRequest>,
    ) -> Result<tonic::Response<product_pb::Product>, tonic::Status> {
        Err(tonic::Status::unimplemented("test service"))
    }

    async fn update_product(
        &self,
        _: tonic::Request<product_pb::UpdateProductRequest>,
    ) -> Result<tonic::Response<product_pb::Product>, tonic::Status> {
        Err(tonic::Status::unimplemented("test service"))
    }

    async fn delete_product(
        &self,
        _: tonic::Request<product_pb::DeleteProductRequest>,
    ) -> Result<tonic::Response<product_pb::DeleteProductResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("test service"))
    }
}

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// How long a call that must be answered at once may take before the test calls it stuck: a
/// guard against a hang (a queued call would wait for a gate that never opens), not a timing
/// assertion.
const PATIENCE: Duration = Duration::from_secs(10);

/// The test server's config from `pairs`, read the way every component reads its own.
fn config_from(pairs: &[(&str, &str)]) -> Result<ServeConfig, ConfigError> {
    let any_port: SocketAddr = ([127, 0, 0, 1], 0).into();
    let settings = Settings::from_pairs(pairs.iter().copied());
    ServeConfig::from_settings(&settings, "test", any_port, any_port)
}

async fn serve_products(
    config: ServeConfig,
    products: HeldProducts,
) -> Result<(Running, tonic::transport::Channel), Box<dyn std::error::Error + Send + Sync>> {
    let running = GrpcServer::new("test", config)
        .add_service(product_pb::product_service_server::ProductServiceServer::new(products))
        .spawn()
        .await?;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", running.addrs().main))?
            .connect()
            .await?;
    Ok((running, channel))
}

fn get_product() -> product_pb::GetProductRequest {
    product_pb::GetProductRequest { id: "p-1".into() }
}

#[test]
fn the_limit_and_faults_are_read_with_the_listeners() -> TestResult {
    let config = config_from(&[])?;
    assert_eq!(config.limit, LimitConfig::default());
    assert!(config.faults.is_empty(), "no faults unless asked for");

    let config = config_from(&[
        ("FLOTILLA_CONCURRENCY_LIMIT_MAX", "7"),
        (
            "FLOTILLA_FAULTS",
            "flotilla.product.v1.ProductService/GetProduct=delay:250ms:10%",
        ),
    ])?;
    assert_eq!((config.limit.max, config.limit.initial), (7, 7));
    assert_eq!(config.faults.rules().len(), 1);
    Ok(())
}

#[test]
fn a_bad_fault_rule_stops_the_component_naming_the_variable_and_the_rule() -> TestResult {
    let error = config_from(&[(
        "FLOTILLA_FAULTS",
        "flotilla.product.v1.ProductService/GetProduct=abort:unavailble:100%",
    )])
    .err()
    .ok_or("a misspelt code was accepted")?;
    let message = error.to_string();
    assert!(
        matches!(&error, ConfigError::Invalid { name, .. } if name == "FLOTILLA_FAULTS"),
        "{message}"
    );
    // What a person needs to fix it: the variable, the bad part, and the codes it may be.
    for part in [
        "FLOTILLA_FAULTS=",
        "\"unavailble\"",
        "unavailable",
        "abort:<grpc code>",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_injected_abort_fails_its_method_only() -> TestResult {
    let config = config_from(&[(
        "FLOTILLA_FAULTS",
        "flotilla.product.v1.ProductService/GetProduct=abort:unavailable:100%",
    )])?;
    let products = HeldProducts::new();
    // The handler would answer at once: only the fault can fail the call.
    products
        .gate
        .add_permits(tokio::sync::Semaphore::MAX_PERMITS);
    let (running, channel) = serve_products(config, products.clone()).await?;
    let mut client = product_pb::product_service_client::ProductServiceClient::new(channel);

    for _ in 0..3 {
        let status = match client.get_product(get_product()).await {
            Ok(_) => panic!("GetProduct answered though a 100% abort rule targets it"),
            Err(status) => status,
        };
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("fault injected"),
            "the message says the fault was injected: {status:?}"
        );
    }
    assert_eq!(
        products.reached(),
        0,
        "an aborted call never reaches the handler"
    );

    client
        .list_products(product_pb::ListProductsRequest::default())
        .await?;
    assert_eq!(
        health_of(running.addrs().main).await?,
        WireStatus::Serving as i32
    );
    running.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_limit_a_call_is_shed_at_once_with_pushback_and_health_answers() -> TestResult {
    let config = config_from(&[("FLOTILLA_CONCURRENCY_LIMIT_MAX", "1")])?;
    let products = HeldProducts::new();
    let (running, channel) = serve_products(config, products.clone()).await?;
    let client = product_pb::product_service_client::ProductServiceClient::new(channel);

    let holding = tokio::spawn({
        let mut client = client.clone();
        async move { client.get_product(get_product()).await }
    });
    // The first call holds the only place until the gate opens.
    products.entered.notified().await;

    let shed = tokio::time::timeout(PATIENCE, client.clone().get_product(get_product()))
        .await
        .map_err(|_| "the call over the limit waited instead of being shed at once")?;
    let status = match shed {
        Ok(_) => panic!("a second call was admitted under a limit of 1"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .and_then(|value| value.to_str().ok()),
        Some("100"),
        "{status:?}"
    );
    assert_eq!(
        products.reached(),
        1,
        "the shed call never reached the handler"
    );
    let health = tokio::time::timeout(PATIENCE, health_of(running.addrs().main))
        .await
        .map_err(|_| "the health check waited behind the limit")??;
    assert_eq!(health, WireStatus::Serving as i32);

    products.gate.add_permits(2);
    let answered = holding.await??;
    assert_eq!(answered.into_inner().id, "p-1");
    // The place is given back: the next call is admitted.
    client.clone().get_product(get_product()).await?;
    assert_eq!(products.reached(), 2);
    running.shutdown().await?;
    Ok(())
}

#[test]
fn health_and_reflection_are_plumbing_and_services_are_not() {
    assert!(is_plumbing("/grpc.health.v1.Health/Check"));
    assert!(is_plumbing(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
    ));
    assert!(is_plumbing(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    ));
    assert!(!is_plumbing(
        "/flotilla.product.v1.ProductService/GetProduct"
    ));
}
