//! `flotilla up` serves the whole request path: HTTP → gateway → gRPC → product → SQLite, with the
//! standard health and reflection services on the gRPC port.

use futures::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1 as reflection_v1;
use tonic_reflection::pb::v1alpha as reflection_v1alpha;

use crate::{TestResult, grpc_channel, http_client, up};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_products_over_http_and_health_and_reflection_over_grpc() -> TestResult {
    let dir = tempfile::tempdir()?;
    let flotilla = up(dir.path()).await;
    let gateway = flotilla.addr("gateway", "http");
    let product = flotilla.addr("product", "grpc");
    let http = http_client();

    let page: serde_json::Value = http
        .get(format!("http://{gateway}/v1/products?page_size=10"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let products = page["products"].as_array().ok_or("no products array")?;
    assert_eq!(products.len(), 10, "the demo catalogue is seeded: {page}");
    assert!(
        page["next_page_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    let id = products[3]["id"].as_str().ok_or("no id")?;
    let one: serde_json::Value = http
        .get(format!("http://{gateway}/v1/products/{id}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(one, products[3]);
    let missing = http
        .get(format!("http://{gateway}/v1/products/none-such"))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    for path in ["healthz", "readyz"] {
        assert_eq!(
            http.get(format!("http://{gateway}/{path}"))
                .send()
                .await?
                .status(),
            200,
            "{path}"
        );
    }
    let admin = flotilla.addr("product", "admin");
    assert_eq!(
        http.get(format!("http://{admin}/ready"))
            .send()
            .await?
            .status(),
        200
    );

    // Every service registered itself in the embedded registry, at the address it listens on.
    let registry = flotilla.addr("registry", "http");
    for service in ["user", "auth", "product"] {
        let passing: serde_json::Value = http
            .get(format!(
                "http://{registry}/v1/health/service/{service}?passing"
            ))
            .send()
            .await?
            .json()
            .await?;
        let listens = flotilla.addr(service, "grpc");
        assert_eq!(
            (
                passing[0]["Service"]["Port"].as_u64(),
                passing.as_array().map(Vec::len)
            ),
            (Some(u64::from(listens.port())), Some(1)),
            "{service}: {passing}"
        );
    }

    let channel = grpc_channel(product).await?;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "flotilla.product.v1.ProductService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner()
            .status;
        assert_eq!(
            status,
            ServingStatus::Serving as i32,
            "health of {service:?}"
        );
    }

    let mut v1 =
        reflection_v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = reflection_v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            reflection_v1::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = v1
        .server_reflection_info(futures::stream::iter([request]))
        .await?
        .into_inner();
    let listed = match responses
        .next()
        .await
        .ok_or("no reflection answer")??
        .message_response
    {
        Some(reflection_v1::server_reflection_response::MessageResponse::ListServicesResponse(
            list,
        )) => list
            .service
            .into_iter()
            .map(|service| service.name)
            .collect::<Vec<_>>(),
        other => return Err(format!("unexpected reflection answer {other:?}").into()),
    };
    for expected in [
        "flotilla.product.v1.ProductService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed.iter().any(|name| name == expected),
            "{expected} missing from {listed:?}"
        );
    }
    assert!(
        !listed
            .iter()
            .any(|name| name == "flotilla.user.v1.UserService"),
        "reflection lists only the services this port serves: {listed:?}"
    );

    // v1alpha, which older grpcurl and Postman use, describes the product contract too.
    let mut v1alpha =
        reflection_v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = reflection_v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            reflection_v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "flotilla.product.v1.ProductService".into(),
            ),
        ),
    };
    let mut responses = v1alpha
        .server_reflection_info(futures::stream::iter([request]))
        .await?
        .into_inner();
    match responses
        .next()
        .await
        .ok_or("no reflection answer")??
        .message_response
    {
        Some(
            reflection_v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(
                files,
            ),
        ) => {
            assert!(!files.file_descriptor_proto.is_empty());
        }
        other => return Err(format!("unexpected reflection answer {other:?}").into()),
    }

    flotilla.stop().await;
    assert!(
        !dir.path().join("endpoints.json").exists(),
        "a clean stop removes endpoints.json"
    );
    Ok(())
}
