use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;

use super::*;

fn loopback_config() -> ServeConfig {
    let any_port: SocketAddr = ([127, 0, 0, 1], 0).into();
    ServeConfig {
        grpc_addr: any_port,
        admin_addr: any_port,
        drain_timeout: Duration::from_secs(5),
    }
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
