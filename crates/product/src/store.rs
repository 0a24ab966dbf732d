//! Products in SQL: one implementation for SQLite and PostgreSQL alike, over sqlx's Any driver with
//! queries in the SQL both share (`$n` placeholders work in both). A persistence trait would have had
//! this one implementor, so there is none: tests run the same cases against both databases instead.
//!
//! Updates are optimistic: read, apply the patch in the domain, then write only if the revision is
//! still the one read (`UPDATE … WHERE revision = $n`). One statement is atomic in both databases, so
//! no transaction has to hold a lock across the read (SQLite cannot upgrade a read lock without
//! risking a busy error).

use platform::database::{Database, DatabaseConfig, DatabaseError};
use platform::sqlx::any::{AnyArguments, AnyRow};
use platform::sqlx::query::Query;
use platform::sqlx::{self, Any, AssertSqlSafe, Row};
use tracing::Instrument;

use crate::domain::{Currency, Cursor, Product, ProductFields, ProductFilter, ProductId};
use crate::error::ProductError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The column list every read selects; the literal is repeated in the SQL constants below because
/// sqlx only takes `&'static str` (or an explicit `AssertSqlSafe`) as query text.
const COLUMNS: &str =
    "id, name, description, price_cents, currency, stock, created_at_us, updated_at_us, revision";
const SELECT_ONE: &str = "SELECT id, name, description, price_cents, currency, stock, \
     created_at_us, updated_at_us, revision FROM products WHERE id = $1";
const INSERT: &str = "INSERT INTO products (id, name, description, price_cents, currency, stock, \
     created_at_us, updated_at_us, revision) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// The product table of one database.
#[derive(Debug, Clone)]
pub struct ProductStore {
    database: Database,
}

/// What a conditional write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The row was written.
    Written,
    /// No row has the id.
    Missing,
    /// The row exists but its revision is not the expected one.
    RevisionChanged,
}

impl ProductStore {
    /// Connects as `config` says and applies the migrations.
    ///
    /// # Errors
    /// A [`DatabaseError`] when the database cannot be reached or migrated.
    pub async fn open(config: &DatabaseConfig) -> Result<Self, DatabaseError> {
        Ok(Self {
            database: Database::open(config, &MIGRATOR).await?,
        })
    }

    /// The underlying database, for readiness checks and shutdown.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// One product, if it exists.
    ///
    /// # Errors
    /// [`ProductError::Unavailable`] or [`ProductError::Storage`] when the database fails.
    pub async fn get(&self, id: &ProductId) -> Result<Option<Product>, ProductError> {
        let row = sqlx::query(SELECT_ONE)
            .bind(id.as_str())
            .fetch_optional(self.database.pool())
            .instrument(self.database.span(SELECT_ONE))
            .await
            .map_err(ProductError::from_database)?;
        row.as_ref().map(product_from_row).transpose()
    }

    /// Up to `limit` products matching `filter`, oldest first, starting after `after`.
    ///
    /// # Errors
    /// [`ProductError::Unavailable`] or [`ProductError::Storage`] when the database fails.
    pub async fn list(
        &self,
        filter: &ProductFilter,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<Product>, ProductError> {
        let mut conditions: Vec<String> = Vec::new();
        let mut values: Vec<Bound> = Vec::new();
        if let Some(currency) = &filter.currency {
            let n = push(&mut values, Bound::Text(currency.as_str().to_owned()));
            conditions.push(format!("currency = ${n}"));
        }
        if let Some(min) = filter.min_price_cents {
            let n = push(&mut values, Bound::Number(min));
            conditions.push(format!("price_cents >= ${n}"));
        }
        if let Some(max) = filter.max_price_cents {
            let n = push(&mut values, Bound::Number(max));
            conditions.push(format!("price_cents <= ${n}"));
        }
        if filter.in_stock_only {
            conditions.push("stock > 0".to_owned());
        }
        if let Some(cursor) = after {
            let at = push(&mut values, Bound::Number(cursor.created_at_us));
            let id = push(&mut values, Bound::Text(cursor.id.clone()));
            conditions.push(format!(
                "(created_at_us > ${at} OR (created_at_us = ${at} AND id > ${id}))"
            ));
        }
        let limit = push(&mut values, Bound::Number(i64::from(limit)));

        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM products {where_clause} ORDER BY created_at_us, id LIMIT ${limit}"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for value in values {
            query = match value {
                Bound::Text(text) => query.bind(text),
                Bound::Number(number) => query.bind(number),
            };
        }
        let rows = query
            .fetch_all(self.database.pool())
            .instrument(self.database.span("SELECT products"))
            .await
            .map_err(ProductError::from_database)?;
        rows.iter().map(product_from_row).collect()
    }

    /// Stores a new product.
    ///
    /// # Errors
    /// [`ProductError::AlreadyExists`] when the id is taken; database failures otherwise.
    pub async fn insert(&self, product: &Product) -> Result<(), ProductError> {
        let result = insert_query(product)
            .execute(self.database.pool())
            .instrument(self.database.span("INSERT products"))
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                Err(ProductError::AlreadyExists(product.id.clone()))
            }
            Err(error) => Err(ProductError::from_database(error)),
        }
    }

    /// Writes `product` if the stored revision is still `expected_revision`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn update(
        &self,
        product: &Product,
        expected_revision: i64,
    ) -> Result<WriteOutcome, ProductError> {
        let fields = &product.fields;
        let result = sqlx::query(
            "UPDATE products SET name = $1, description = $2, price_cents = $3, currency = $4, \
             stock = $5, updated_at_us = $6, revision = $7 WHERE id = $8 AND revision = $9",
        )
        .bind(fields.name.as_str())
        .bind(fields.description.as_str())
        .bind(fields.price_cents)
        .bind(fields.currency.as_str())
        .bind(fields.stock)
        .bind(product.updated_at_us)
        .bind(product.revision)
        .bind(product.id.as_str())
        .bind(expected_revision)
        .execute(self.database.pool())
        .instrument(self.database.span("UPDATE products"))
        .await
        .map_err(ProductError::from_database)?;
        self.outcome(&product.id, result.rows_affected()).await
    }

    /// Deletes a product, only at `expected_revision` when one is given.
    ///
    /// # Errors
    /// Database failures.
    pub async fn delete(
        &self,
        id: &ProductId,
        expected_revision: Option<i64>,
    ) -> Result<WriteOutcome, ProductError> {
        let result = match expected_revision {
            Some(revision) => {
                sqlx::query("DELETE FROM products WHERE id = $1 AND revision = $2")
                    .bind(id.as_str())
                    .bind(revision)
                    .execute(self.database.pool())
                    .instrument(self.database.span("DELETE products"))
                    .await
            }
            None => {
                sqlx::query("DELETE FROM products WHERE id = $1")
                    .bind(id.as_str())
                    .execute(self.database.pool())
                    .instrument(self.database.span("DELETE products"))
                    .await
            }
        }
        .map_err(ProductError::from_database)?;
        self.outcome(id, result.rows_affected()).await
    }

    /// Tells a write that touched nothing because the row is gone from one that lost a race.
    async fn outcome(&self, id: &ProductId, rows: u64) -> Result<WriteOutcome, ProductError> {
        if rows > 0 {
            return Ok(WriteOutcome::Written);
        }
        Ok(match self.get(id).await? {
            Some(_) => WriteOutcome::RevisionChanged,
            None => WriteOutcome::Missing,
        })
    }

    /// Inserts `products` under the seed `name` if that seed was never applied and the table is
    /// empty; either way the seed is marked as applied, so it never runs again. Returns whether the
    /// products were inserted.
    ///
    /// # Errors
    /// Database failures; nothing is written then.
    pub async fn seed_once(&self, name: &str, products: &[Product]) -> Result<bool, ProductError> {
        let mut transaction = self
            .database
            .pool()
            .begin()
            .await
            .map_err(ProductError::from_database)?;
        let marked = sqlx::query(
            "INSERT INTO product_seeds (name, applied_at_us) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(platform::time::now_micros())
        .execute(&mut *transaction)
        .instrument(self.database.span("INSERT product_seeds"))
        .await
        .map_err(ProductError::from_database)?;
        if marked.rows_affected() == 0 {
            return Ok(false);
        }
        let existing: i64 = sqlx::query("SELECT COUNT(*) FROM products")
            .fetch_one(&mut *transaction)
            .instrument(self.database.span("SELECT products"))
            .await
            .and_then(|row| row.try_get(0))
            .map_err(ProductError::from_database)?;
        let seeded = existing == 0;
        if seeded {
            for product in products {
                insert_query(product)
                    .execute(&mut *transaction)
                    .instrument(self.database.span("INSERT products"))
                    .await
                    .map_err(ProductError::from_database)?;
            }
        }
        transaction
            .commit()
            .await
            .map_err(ProductError::from_database)?;
        Ok(seeded)
    }
}

/// The insert of one product, its values bound.
fn insert_query(product: &Product) -> Query<'_, Any, AnyArguments> {
    let fields = &product.fields;
    sqlx::query(INSERT)
        .bind(product.id.as_str())
        .bind(fields.name.as_str())
        .bind(fields.description.as_str())
        .bind(fields.price_cents)
        .bind(fields.currency.as_str())
        .bind(fields.stock)
        .bind(product.created_at_us)
        .bind(product.updated_at_us)
        .bind(product.revision)
}

/// Adds a value to bind and returns its placeholder number: values get `$1`, `$2`, … in push
/// order, which is the order they are bound in.
fn push(values: &mut Vec<Bound>, value: Bound) -> usize {
    values.push(value);
    values.len()
}

enum Bound {
    Text(String),
    Number(i64),
}

/// A row back into a product. Rows were validated on the way in; a row that no longer passes (edited
/// by hand) is reported as a storage error rather than served.
fn product_from_row(row: &AnyRow) -> Result<Product, ProductError> {
    let text = |column: &str| row.try_get::<String, _>(column);
    let number = |column: &str| row.try_get::<i64, _>(column);
    let corrupt = |reason: String| ProductError::Storage(sqlx::Error::Decode(reason.into()));
    let id = text("id").map_err(ProductError::from_database)?;
    let currency = text("currency").map_err(ProductError::from_database)?;
    Ok(Product {
        id: ProductId::parse("id", &id).map_err(|error| corrupt(error.to_string()))?,
        fields: ProductFields {
            name: text("name").map_err(ProductError::from_database)?,
            description: text("description").map_err(ProductError::from_database)?,
            price_cents: number("price_cents").map_err(ProductError::from_database)?,
            currency: Currency::parse("currency", &currency)
                .map_err(|error| corrupt(error.to_string()))?,
            stock: number("stock").map_err(ProductError::from_database)?,
        },
        created_at_us: number("created_at_us").map_err(ProductError::from_database)?,
        updated_at_us: number("updated_at_us").map_err(ProductError::from_database)?,
        revision: number("revision").map_err(ProductError::from_database)?,
    })
}
