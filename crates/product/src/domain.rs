//! Products and their rules, in plain Rust: what a valid product is, how a partial update applies,
//! what a listing filter means. No tonic, no SQL, no I/O.

use std::fmt;

/// Longest product name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 5000;
/// Longest product id, in characters.
pub const MAX_ID_CHARS: usize = 64;

pub use platform::validation::ValidationError;

/// A product id: 1-64 characters of `[a-z0-9-]`, safe in a URL path and a log line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProductId(String);

impl ProductId {
    /// Checks a client-given id.
    ///
    /// # Errors
    /// A [`ValidationError`] naming `field` when the id is empty, too long or has other characters.
    pub fn parse(field: &'static str, id: &str) -> Result<Self, ValidationError> {
        if id.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        if id.chars().count() > MAX_ID_CHARS {
            return Err(ValidationError::new(
                field,
                format!("must be at most {MAX_ID_CHARS} characters"),
            ));
        }
        if !id
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        {
            return Err(ValidationError::new(
                field,
                "may only contain lower-case letters a-z, digits and '-'",
            ));
        }
        Ok(Self(id.to_owned()))
    }

    /// A fresh server-assigned id: a UUIDv7, so ids sort roughly by creation time.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An ISO 4217 alphabetic currency code: three upper-case ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Currency(String);

impl Currency {
    /// Checks the shape of a currency code. Whether the code is assigned by ISO is not checked: the
    /// list changes, and a shop may sell in a currency newer than this binary.
    ///
    /// # Errors
    /// A [`ValidationError`] naming `field` when the code is not three upper-case letters.
    pub fn parse(field: &'static str, code: &str) -> Result<Self, ValidationError> {
        if code.len() == 3 && code.bytes().all(|byte| byte.is_ascii_uppercase()) {
            Ok(Self(code.to_owned()))
        } else {
            Err(ValidationError::new(
                field,
                format!(
                    "{code:?} is not an ISO 4217 code: expected three upper-case letters such as EUR"
                ),
            ))
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The fields a person sets on a product, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductFields {
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Price in the currency's minor units.
    pub price_cents: i64,
    /// Currency of the price.
    pub currency: Currency,
    /// Units available.
    pub stock: i64,
}

/// The fields as they arrive, unchecked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawProductFields {
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Price in minor units.
    pub price_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Units available.
    pub stock: i64,
}

impl RawProductFields {
    /// Checks every rule.
    ///
    /// # Errors
    /// The first [`ValidationError`] found, in field order.
    pub fn validate(self) -> Result<ProductFields, ValidationError> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err(ValidationError::new("name", "must not be empty"));
        }
        if name.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "name",
                "must not contain control characters (such as NUL, tab or newline)",
            ));
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(ValidationError::new(
                "name",
                format!("must be at most {MAX_NAME_CHARS} characters"),
            ));
        }
        if self.description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(ValidationError::new(
                "description",
                format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
        if self
            .description
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(ValidationError::new(
                "description",
                "must not contain control characters other than newline and tab",
            ));
        }
        if self.price_cents < 0 {
            return Err(ValidationError::new(
                "price_cents",
                format!("must not be negative, got {}", self.price_cents),
            ));
        }
        let currency = Currency::parse("currency", &self.currency)?;
        if self.stock < 0 {
            return Err(ValidationError::new(
                "stock",
                format!("must not be negative, got {}", self.stock),
            ));
        }
        Ok(ProductFields {
            name: name.to_owned(),
            description: self.description,
            price_cents: self.price_cents,
            currency,
            stock: self.stock,
        })
    }
}

/// A stored product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Its id.
    pub id: ProductId,
    /// What a person set.
    pub fields: ProductFields,
    /// Creation instant, microseconds since the epoch.
    pub created_at_us: i64,
    /// Last change, microseconds since the epoch.
    pub updated_at_us: i64,
    /// Starts at 1, grows by one on every update; the etag is made from it.
    pub revision: i64,
}

impl Product {
    /// A new product created now.
    pub fn new(id: ProductId, fields: ProductFields, now_us: i64) -> Self {
        Self {
            id,
            fields,
            created_at_us: now_us,
            updated_at_us: now_us,
            revision: 1,
        }
    }

    /// The etag of the current revision (AIP-154): opaque to clients, compared for equality.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.revision)
    }

    /// Whether `etag` names the current revision. An empty etag means "no condition".
    pub fn etag_matches(&self, etag: &str) -> bool {
        etag.is_empty() || etag == self.etag()
    }

    /// The product after `patch`, revision and update time moved on.
    ///
    /// # Errors
    /// A [`ValidationError`] when the patched product breaks a rule.
    pub fn patched(&self, patch: &ProductPatch, now_us: i64) -> Result<Self, ValidationError> {
        let current = &self.fields;
        let raw = RawProductFields {
            name: patch.name.clone().unwrap_or_else(|| current.name.clone()),
            description: patch
                .description
                .clone()
                .unwrap_or_else(|| current.description.clone()),
            price_cents: patch.price_cents.unwrap_or(current.price_cents),
            currency: patch
                .currency
                .clone()
                .unwrap_or_else(|| current.currency.as_str().to_owned()),
            stock: patch.stock.unwrap_or(current.stock),
        };
        Ok(Self {
            id: self.id.clone(),
            fields: raw.validate()?,
            created_at_us: self.created_at_us,
            updated_at_us: now_us.max(self.updated_at_us),
            revision: self.revision + 1,
        })
    }
}

/// The fields an update changes: each `Some` replaces the stored value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New price.
    pub price_cents: Option<i64>,
    /// New currency.
    pub currency: Option<String>,
    /// New stock level.
    pub stock: Option<i64>,
}

impl ProductPatch {
    /// Builds a patch from field-mask paths and the values in `source`.
    ///
    /// # Errors
    /// A [`ValidationError`] on `update_mask` when it is empty or names an unknown or read-only field.
    pub fn from_mask<S: AsRef<str>>(
        paths: &[S],
        source: RawProductFields,
    ) -> Result<Self, ValidationError> {
        if paths.is_empty() {
            return Err(ValidationError::new(
                "update_mask",
                "must name the fields to change (name, description, price_cents, currency, stock)",
            ));
        }
        let mut patch = Self::default();
        for path in paths {
            match path.as_ref() {
                "name" => patch.name = Some(source.name.clone()),
                "description" => patch.description = Some(source.description.clone()),
                "price_cents" => patch.price_cents = Some(source.price_cents),
                "currency" => patch.currency = Some(source.currency.clone()),
                "stock" => patch.stock = Some(source.stock),
                other => {
                    return Err(ValidationError::new(
                        "update_mask",
                        format!(
                            "{other:?} is not a field that can be changed: use name, description, price_cents, currency or stock"
                        ),
                    ));
                }
            }
        }
        Ok(patch)
    }
}

/// Which products a listing returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductFilter {
    /// Only this currency.
    pub currency: Option<Currency>,
    /// Only prices at least this.
    pub min_price_cents: Option<i64>,
    /// Only prices at most this.
    pub max_price_cents: Option<i64>,
    /// Only products in stock.
    pub in_stock_only: bool,
}

impl ProductFilter {
    /// Checks a filter as it arrives.
    ///
    /// # Errors
    /// A [`ValidationError`] for a malformed currency, a negative bound, or a minimum above the maximum.
    pub fn new(
        currency: Option<&str>,
        min_price_cents: Option<i64>,
        max_price_cents: Option<i64>,
        in_stock_only: bool,
    ) -> Result<Self, ValidationError> {
        let currency = currency
            .map(|code| Currency::parse("currency", code))
            .transpose()?;
        for (field, bound) in [
            ("min_price_cents", min_price_cents),
            ("max_price_cents", max_price_cents),
        ] {
            if let Some(bound) = bound
                && bound < 0
            {
                return Err(ValidationError::new(
                    field,
                    format!("must not be negative, got {bound}"),
                ));
            }
        }
        if let (Some(min), Some(max)) = (min_price_cents, max_price_cents)
            && min > max
        {
            return Err(ValidationError::new(
                "min_price_cents",
                format!("must not exceed max_price_cents ({min} > {max})"),
            ));
        }
        Ok(Self {
            currency,
            min_price_cents,
            max_price_cents,
            in_stock_only,
        })
    }

    /// A stable description of the filter, which page tokens are bound to.
    pub fn fingerprint(&self) -> String {
        format!(
            "currency={:?};min={:?};max={:?};in_stock={}",
            self.currency.as_ref().map(Currency::as_str),
            self.min_price_cents,
            self.max_price_cents,
            self.in_stock_only
        )
    }
}

/// Where a listing page ended: the last product's creation instant and id (a keyset cursor).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// Creation instant of the last product returned.
    pub created_at_us: i64,
    /// Id of the last product returned.
    pub id: String,
}

impl Cursor {
    /// The cursor just after `product`.
    pub fn after(product: &Product) -> Self {
        Self {
            created_at_us: product.created_at_us,
            id: product.id.as_str().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests;
