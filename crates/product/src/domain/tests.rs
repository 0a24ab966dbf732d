use super::*;

fn raw() -> RawProductFields {
    RawProductFields {
        name: "Espresso beans".into(),
        description: "1 kg, dark roast".into(),
        price_cents: 1899,
        currency: "EUR".into(),
        stock: 12,
    }
}

fn field_of(result: Result<ProductFields, ValidationError>) -> Option<&'static str> {
    result.err().map(|error| error.field)
}

#[test]
fn a_valid_product_passes_and_its_name_is_trimmed() {
    let fields = RawProductFields {
        name: "  Espresso beans ".into(),
        ..raw()
    }
    .validate();
    assert_eq!(
        fields.map(|fields| fields.name).ok().as_deref(),
        Some("Espresso beans")
    );
}

#[test]
fn each_rule_names_its_field() {
    assert_eq!(
        field_of(
            RawProductFields {
                name: "   ".into(),
                ..raw()
            }
            .validate()
        ),
        Some("name")
    );
    assert_eq!(
        field_of(
            RawProductFields {
                name: "x".repeat(MAX_NAME_CHARS + 1),
                ..raw()
            }
            .validate()
        ),
        Some("name")
    );
    assert!(
        RawProductFields {
            name: "é".repeat(MAX_NAME_CHARS),
            ..raw()
        }
        .validate()
        .is_ok(),
        "limits count characters, not bytes"
    );
    assert_eq!(
        field_of(
            RawProductFields {
                description: "x".repeat(MAX_DESCRIPTION_CHARS + 1),
                ..raw()
            }
            .validate()
        ),
        Some("description")
    );
    assert_eq!(
        field_of(
            RawProductFields {
                price_cents: -1,
                ..raw()
            }
            .validate()
        ),
        Some("price_cents")
    );
    assert!(
        RawProductFields {
            price_cents: 0,
            stock: 0,
            ..raw()
        }
        .validate()
        .is_ok(),
        "free and sold out are allowed"
    );
    assert_eq!(
        field_of(RawProductFields { stock: -5, ..raw() }.validate()),
        Some("stock")
    );
    for bad in ["eur", "EURO", "E1R", "", "€"] {
        assert_eq!(
            field_of(
                RawProductFields {
                    currency: bad.into(),
                    ..raw()
                }
                .validate()
            ),
            Some("currency"),
            "{bad}"
        );
    }
}

#[test]
fn product_ids_are_url_safe() {
    assert!(ProductId::parse("id", "espresso-beans-1kg").is_ok());
    assert!(
        ProductId::parse("id", &ProductId::generate().to_string()).is_ok(),
        "generated ids pass the same rule"
    );
    for bad in [
        "",
        "Upper",
        "with space",
        "slash/",
        "dot.",
        &"a".repeat(MAX_ID_CHARS + 1),
    ] {
        assert!(ProductId::parse("id", bad).is_err(), "{bad}");
    }
}

#[test]
fn a_patch_changes_only_masked_fields_and_moves_the_revision() -> Result<(), ValidationError> {
    let product = Product::new(ProductId::parse("id", "p")?, raw().validate()?, 100);
    let source = RawProductFields {
        name: "ignored".into(),
        price_cents: 999,
        ..Default::default()
    };
    let patch = ProductPatch::from_mask(&["price_cents"], source)?;
    let patched = product.patched(&patch, 200)?;
    assert_eq!(patched.fields.price_cents, 999);
    assert_eq!(patched.fields.name, "Espresso beans");
    assert_eq!(patched.revision, 2);
    assert_eq!(patched.updated_at_us, 200);
    assert_eq!(patched.created_at_us, 100);
    assert_ne!(patched.etag(), product.etag());
    Ok(())
}

#[test]
fn a_patch_is_validated() -> Result<(), ValidationError> {
    let product = Product::new(ProductId::parse("id", "p")?, raw().validate()?, 100);
    let patch = ProductPatch::from_mask(
        &["stock"],
        RawProductFields {
            stock: -1,
            ..Default::default()
        },
    )?;
    assert_eq!(
        product.patched(&patch, 200).err().map(|e| e.field),
        Some("stock")
    );
    Ok(())
}

#[test]
fn masks_must_name_known_fields() {
    let empty: [&str; 0] = [];
    assert_eq!(
        ProductPatch::from_mask(&empty, raw())
            .err()
            .map(|e| e.field),
        Some("update_mask")
    );
    assert_eq!(
        ProductPatch::from_mask(&["id"], raw())
            .err()
            .map(|e| e.field),
        Some("update_mask")
    );
    assert_eq!(
        ProductPatch::from_mask(&["created_at"], raw())
            .err()
            .map(|e| e.field),
        Some("update_mask")
    );
}

#[test]
fn etags_match_the_current_revision_or_nothing() -> Result<(), ValidationError> {
    let product = Product::new(ProductId::parse("id", "p")?, raw().validate()?, 100);
    assert!(product.etag_matches(""));
    assert!(product.etag_matches(&product.etag()));
    assert!(!product.etag_matches("\"2\""));
    Ok(())
}

#[test]
fn filters_are_checked_and_fingerprinted() {
    assert!(ProductFilter::new(Some("usd"), None, None, false).is_err());
    assert!(ProductFilter::new(None, Some(-1), None, false).is_err());
    assert_eq!(
        ProductFilter::new(None, Some(10), Some(5), false)
            .err()
            .map(|e| e.field),
        Some("min_price_cents")
    );
    let a = ProductFilter::new(Some("EUR"), Some(1), None, true).unwrap_or_default();
    let b = ProductFilter::new(Some("EUR"), Some(2), None, true).unwrap_or_default();
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert_eq!(a.fingerprint(), a.clone().fingerprint());
}

#[test]
fn control_characters_are_refused_where_they_do_not_belong() {
    let nul_name = RawProductFields {
        name: "Nul\0byte".into(),
        ..raw()
    };
    assert_eq!(field_of(nul_name.validate()), Some("name"));
    let nul_description = RawProductFields {
        description: "Nul\0byte".into(),
        ..raw()
    };
    assert_eq!(field_of(nul_description.validate()), Some("description"));
    let lines = RawProductFields {
        description: "Two\nlines\tand a tab".into(),
        ..raw()
    };
    assert!(
        lines.validate().is_ok(),
        "newlines and tabs are fine in a description"
    );
}
