//! The store against SQLite and PostgreSQL: every case runs on both.

use platform::database::DatabaseConfig;
use product::domain::{Cursor, Product, ProductFilter, ProductId, RawProductFields};
use product::error::ProductError;
use product::store::{ProductStore, WriteOutcome};
use test_support::both;

type TestResult = Result<(), Box<dyn std::error::Error>>;

pub fn product(id: &str, price_cents: i64, currency: &str, stock: i64, at: i64) -> Product {
    let fields = RawProductFields {
        name: format!("Product {id}"),
        description: String::new(),
        price_cents,
        currency: currency.into(),
        stock,
    }
    .validate()
    .unwrap_or_else(|error| panic!("test product {id}: {error}"));
    let id = ProductId::parse("id", id).unwrap_or_else(|error| panic!("test id: {error}"));
    Product::new(id, fields, at)
}

both!(insert_then_get_round_trips, crate::open, crate::close);
async fn insert_then_get_round_trips(store: ProductStore) -> TestResult {
    let mut original = product("round-trip", 1234, "EUR", 3, 1_700_000_000_000_001);
    original.fields.description = "Ünïcödé description, with 'quotes'".into();
    store.insert(&original).await?;
    assert_eq!(store.get(&original.id).await?, Some(original));
    assert_eq!(store.get(&ProductId::parse("id", "missing")?).await?, None);
    Ok(())
}

both!(duplicate_ids_are_refused, crate::open, crate::close);
async fn duplicate_ids_are_refused(store: ProductStore) -> TestResult {
    store.insert(&product("dup", 1, "EUR", 1, 1)).await?;
    let again = store.insert(&product("dup", 2, "USD", 2, 2)).await;
    assert!(
        matches!(again, Err(ProductError::AlreadyExists(_))),
        "{again:?}"
    );
    // The first one is untouched.
    assert_eq!(
        store
            .get(&ProductId::parse("id", "dup")?)
            .await?
            .map(|p| p.fields.price_cents),
        Some(1)
    );
    Ok(())
}

both!(
    listing_walks_pages_in_creation_order_with_filters,
    crate::open,
    crate::close
);
async fn listing_walks_pages_in_creation_order_with_filters(store: ProductStore) -> TestResult {
    // Two share a creation instant, so the id must break the tie.
    for (id, price, currency, stock, at) in [
        ("e", 500, "EUR", 1, 30),
        ("a", 100, "EUR", 0, 10),
        ("c", 300, "USD", 5, 20),
        ("b", 200, "EUR", 2, 20),
        ("d", 400, "EUR", 9, 25),
    ] {
        store
            .insert(&product(id, price, currency, stock, at))
            .await?;
    }
    let all = ProductFilter::default();
    let ids = |products: Vec<Product>| {
        products
            .into_iter()
            .map(|p| p.id.to_string())
            .collect::<Vec<_>>()
    };

    assert_eq!(
        ids(store.list(&all, None, 10).await?),
        ["a", "b", "c", "d", "e"]
    );
    let first = store.list(&all, None, 2).await?;
    assert_eq!(ids(first.clone()), ["a", "b"]);
    let after = Cursor::after(first.last().ok_or("empty page")?);
    assert_eq!(ids(store.list(&all, Some(&after), 2).await?), ["c", "d"]);

    let euros_in_stock = ProductFilter::new(Some("EUR"), Some(150), Some(450), true)?;
    assert_eq!(
        ids(store.list(&euros_in_stock, None, 10).await?),
        ["b", "d"]
    );
    let in_stock = ProductFilter::new(None, None, None, true)?;
    assert_eq!(
        ids(store.list(&in_stock, None, 10).await?),
        ["b", "c", "d", "e"]
    );
    Ok(())
}

both!(
    updates_are_conditional_on_the_revision,
    crate::open,
    crate::close
);
async fn updates_are_conditional_on_the_revision(store: ProductStore) -> TestResult {
    let original = product("rev", 100, "EUR", 1, 1);
    store.insert(&original).await?;
    let mut changed = original.clone();
    changed.fields.price_cents = 150;
    changed.revision = 2;
    changed.updated_at_us = 2;
    assert_eq!(store.update(&changed, 1).await?, WriteOutcome::Written);
    assert_eq!(store.get(&original.id).await?, Some(changed.clone()));
    // A writer that read revision 1 loses.
    assert_eq!(
        store.update(&changed, 1).await?,
        WriteOutcome::RevisionChanged
    );
    let ghost = product("ghost", 1, "EUR", 1, 1);
    assert_eq!(store.update(&ghost, 1).await?, WriteOutcome::Missing);
    Ok(())
}

both!(
    deletes_are_optionally_conditional,
    crate::open,
    crate::close
);
async fn deletes_are_optionally_conditional(store: ProductStore) -> TestResult {
    let one = product("one", 1, "EUR", 1, 1);
    let two = product("two", 1, "EUR", 1, 2);
    store.insert(&one).await?;
    store.insert(&two).await?;
    assert_eq!(
        store.delete(&one.id, Some(7)).await?,
        WriteOutcome::RevisionChanged
    );
    assert_eq!(store.delete(&one.id, Some(1)).await?, WriteOutcome::Written);
    assert_eq!(store.delete(&one.id, None).await?, WriteOutcome::Missing);
    assert_eq!(store.delete(&two.id, None).await?, WriteOutcome::Written);
    assert_eq!(
        store.list(&ProductFilter::default(), None, 10).await?,
        vec![]
    );
    Ok(())
}

both!(
    seeding_happens_once_and_only_into_an_empty_store,
    crate::open,
    crate::close
);
async fn seeding_happens_once_and_only_into_an_empty_store(store: ProductStore) -> TestResult {
    let demo = vec![
        product("demo-1", 1, "EUR", 1, 1),
        product("demo-2", 2, "EUR", 1, 2),
    ];
    assert!(store.seed_once("demo", &demo).await?);
    assert!(!store.seed_once("demo", &demo).await?, "a seed runs once");
    store.delete(&demo[0].id, None).await?;
    store.delete(&demo[1].id, None).await?;
    assert!(
        !store.seed_once("demo", &demo).await?,
        "not again after the products were deleted"
    );
    assert_eq!(
        store.list(&ProductFilter::default(), None, 10).await?,
        vec![]
    );

    store.insert(&product("mine", 1, "EUR", 1, 1)).await?;
    assert!(
        !store.seed_once("another", &demo).await?,
        "a store with data is left alone"
    );
    assert_eq!(
        store.list(&ProductFilter::default(), None, 10).await?.len(),
        1
    );
    Ok(())
}

both!(
    reopening_keeps_data_and_migrations_are_idempotent,
    crate::open,
    crate::close
);
async fn reopening_keeps_data_and_migrations_are_idempotent(store: ProductStore) -> TestResult {
    store.insert(&product("kept", 1, "EUR", 1, 1)).await?;
    let url = crate::url_of(&store);
    let reopened = ProductStore::open(&DatabaseConfig::new(url, 2)).await?;
    assert!(
        reopened
            .get(&ProductId::parse("id", "kept")?)
            .await?
            .is_some()
    );
    Ok(())
}
