//! The gRPC service driven through its trait, without a socket: codes and messages a client sees.

use platform::proto::product::v1 as pb;
use platform::proto::product::v1::product_service_server::ProductService;
use product::{ProductApi, ProductStore};
use test_support::both;
use tonic::{Code, Request};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn draft(name: &str, price_cents: i64, currency: &str) -> pb::Product {
    pb::Product {
        name: name.into(),
        price_cents,
        currency: currency.into(),
        stock: 1,
        ..Default::default()
    }
}

async fn create(
    api: &ProductApi,
    id: &str,
    product: pb::Product,
) -> Result<pb::Product, tonic::Status> {
    api.create_product(Request::new(pb::CreateProductRequest {
        product: Some(product),
        product_id: id.into(),
    }))
    .await
    .map(tonic::Response::into_inner)
}

async fn list(
    api: &ProductApi,
    request: pb::ListProductsRequest,
) -> Result<pb::ListProductsResponse, tonic::Status> {
    api.list_products(Request::new(request))
        .await
        .map(tonic::Response::into_inner)
}

both!(
    pages_walk_everything_once_and_tokens_are_checked,
    crate::open,
    crate::close
);
async fn pages_walk_everything_once_and_tokens_are_checked(store: ProductStore) -> TestResult {
    let api = ProductApi::new(store);
    for index in 0..7 {
        create(
            &api,
            "",
            draft(&format!("Item {index}"), 100 * index, "EUR"),
        )
        .await?;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(
            &api,
            pb::ListProductsRequest {
                page_size: 3,
                page_token: token,
                ..Default::default()
            },
        )
        .await?;
        assert!(page.products.len() <= 3);
        seen.extend(page.products.into_iter().map(|p| p.name));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        (0..7).map(|i| format!("Item {i}")).collect::<Vec<_>>()
    );

    let first = list(
        &api,
        pb::ListProductsRequest {
            page_size: 3,
            ..Default::default()
        },
    )
    .await?;
    let changed_filter = list(
        &api,
        pb::ListProductsRequest {
            page_size: 3,
            page_token: first.next_page_token.clone(),
            currency: Some("USD".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        changed_filter.err().map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
    let garbage = list(
        &api,
        pb::ListProductsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(garbage.err().map(|s| s.code()), Some(Code::InvalidArgument));
    let negative = list(
        &api,
        pb::ListProductsRequest {
            page_size: -1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        negative.err().map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
    Ok(())
}

both!(
    writes_answer_with_the_right_codes,
    crate::open,
    crate::close
);
async fn writes_answer_with_the_right_codes(store: ProductStore) -> TestResult {
    let api = ProductApi::new(store);
    let created = create(&api, "kettle", draft("Kettle", 4900, "EUR")).await?;
    assert_eq!(created.id, "kettle");
    assert!(created.created_at.is_some() && created.updated_at.is_some());

    let taken = create(&api, "kettle", draft("Other", 1, "EUR")).await;
    assert_eq!(taken.err().map(|s| s.code()), Some(Code::AlreadyExists));
    let invalid = create(&api, "", draft("Bad", -1, "EUR")).await.err();
    assert_eq!(
        invalid.as_ref().map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
    assert!(
        invalid
            .map(|s| s.message().contains("price_cents"))
            .unwrap_or(false)
    );
    let bad_id = create(&api, "Not An Id", draft("Bad", 1, "EUR")).await;
    assert_eq!(bad_id.err().map(|s| s.code()), Some(Code::InvalidArgument));

    let update = |etag: &str, paths: &[&str], product: pb::Product| pb::UpdateProductRequest {
        product: Some(product),
        update_mask: Some(platform::prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
        etag: etag.into(),
    };
    let price_only = pb::Product {
        id: "kettle".into(),
        price_cents: 3900,
        ..Default::default()
    };
    let updated = api
        .update_product(Request::new(update(
            &created.etag,
            &["price_cents"],
            price_only.clone(),
        )))
        .await?
        .into_inner();
    assert_eq!(
        (updated.price_cents, updated.name.as_str()),
        (3900, "Kettle")
    );
    assert_ne!(updated.etag, created.etag);

    let stale = api
        .update_product(Request::new(update(
            &created.etag,
            &["price_cents"],
            price_only.clone(),
        )))
        .await;
    assert_eq!(
        stale.err().map(|s| s.code()),
        Some(Code::FailedPrecondition)
    );
    let no_mask = api
        .update_product(Request::new(update("", &[], price_only.clone())))
        .await;
    assert_eq!(no_mask.err().map(|s| s.code()), Some(Code::InvalidArgument));
    let read_only = api
        .update_product(Request::new(update("", &["created_at"], price_only)))
        .await;
    assert_eq!(
        read_only.err().map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
    let missing = pb::Product {
        id: "nothing".into(),
        ..Default::default()
    };
    let missing = api
        .update_product(Request::new(update("", &["name"], missing)))
        .await;
    assert_eq!(missing.err().map(|s| s.code()), Some(Code::NotFound));

    let stale_delete = api
        .delete_product(Request::new(pb::DeleteProductRequest {
            id: "kettle".into(),
            etag: created.etag,
        }))
        .await;
    assert_eq!(
        stale_delete.err().map(|s| s.code()),
        Some(Code::FailedPrecondition)
    );
    api.delete_product(Request::new(pb::DeleteProductRequest {
        id: "kettle".into(),
        etag: updated.etag,
    }))
    .await?;
    let gone = api
        .get_product(Request::new(pb::GetProductRequest {
            id: "kettle".into(),
        }))
        .await;
    let gone = gone.err();
    assert_eq!(gone.as_ref().map(|s| s.code()), Some(Code::NotFound));
    assert!(
        gone.map(|s| s.message().contains("kettle"))
            .unwrap_or(false)
    );
    Ok(())
}

both!(
    forged_page_tokens_are_invalid_arguments,
    crate::open,
    crate::close
);
async fn forged_page_tokens_are_invalid_arguments(store: ProductStore) -> TestResult {
    let api = ProductApi::new(store);
    create(&api, "", draft("Item", 1, "EUR")).await?;
    // A token is not signed, so anyone can build one; a cursor holding a NUL (which PostgreSQL
    // refuses in text) must be a bad token, not a database error.
    let fingerprint = product::domain::ProductFilter::default().fingerprint();
    let cursor = product::domain::Cursor {
        created_at_us: 0,
        id: "\0".into(),
    };
    let forged = platform::pagination::encode_token(&cursor, &fingerprint);
    let answer = list(
        &api,
        pb::ListProductsRequest {
            page_token: forged,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(answer.err().map(|s| s.code()), Some(Code::InvalidArgument));
    Ok(())
}
