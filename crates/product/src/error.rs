//! The product service's errors and their one mapping to gRPC status codes. A client sees a message
//! it can act on; storage failures are logged here once and reach the client as a bare "internal
//! error" or "temporarily unavailable", never SQL text.

use platform::pagination::PageError;
use tonic::{Code, Status};

use crate::domain::{ProductId, ValidationError};

/// Everything that can go wrong in the product service.
#[derive(Debug, thiserror::Error)]
pub enum ProductError {
    /// A request field breaks a rule.
    #[error("invalid {0}")]
    Invalid(#[from] ValidationError),
    /// A page size or token is not acceptable.
    #[error(transparent)]
    Page(#[from] PageError),
    /// No product has the id.
    #[error("product \"{0}\" not found")]
    NotFound(ProductId),
    /// A client-chosen id is taken.
    #[error("product \"{0}\" already exists")]
    AlreadyExists(ProductId),
    /// The client's etag names an older revision.
    #[error(
        "product \"{id}\" has changed since etag {given}: read it again and reapply the change"
    )]
    EtagMismatch {
        /// The product.
        id: ProductId,
        /// The etag the client sent.
        given: String,
    },
    /// Another writer changed the product between our read and our write.
    #[error("product \"{0}\" was changed concurrently: retry the request")]
    Conflict(ProductId),
    /// The database could not be reached in time; a retry may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database failed in a way a retry will not fix.
    #[error("database error: {0}")]
    Storage(#[source] sqlx::Error),
}

impl ProductError {
    /// Sorts a database error: a busy, restarting or unreachable database is worth a retry
    /// (UNAVAILABLE); the rest are not (INTERNAL).
    pub fn from_database(error: sqlx::Error) -> Self {
        if platform::database::is_transient(&error) {
            Self::Unavailable(error)
        } else {
            Self::Storage(error)
        }
    }
}

impl From<ProductError> for Status {
    fn from(error: ProductError) -> Self {
        let code = match &error {
            ProductError::Invalid(_) | ProductError::Page(_) => Code::InvalidArgument,
            ProductError::NotFound(_) => Code::NotFound,
            ProductError::AlreadyExists(_) => Code::AlreadyExists,
            ProductError::EtagMismatch { .. } => Code::FailedPrecondition,
            ProductError::Conflict(_) => Code::Aborted,
            ProductError::Unavailable(_) => Code::Unavailable,
            ProductError::Storage(_) => Code::Internal,
        };
        match &error {
            ProductError::Unavailable(_) => {
                tracing::warn!(%error, "product store unavailable");
                Status::new(code, "product store temporarily unavailable; retry later")
            }
            ProductError::Storage(_) => {
                tracing::error!(%error, "product store failed");
                Status::new(code, "internal error")
            }
            _ => Status::new(code, error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_grpc_guidance() -> Result<(), ValidationError> {
        let id = ProductId::parse("id", "p")?;
        let cases = [
            (ProductError::NotFound(id.clone()), Code::NotFound),
            (ProductError::AlreadyExists(id.clone()), Code::AlreadyExists),
            (
                ProductError::Page(PageError::MalformedToken),
                Code::InvalidArgument,
            ),
            (
                ProductError::EtagMismatch {
                    id: id.clone(),
                    given: "\"1\"".into(),
                },
                Code::FailedPrecondition,
            ),
            (ProductError::Conflict(id), Code::Aborted),
            (
                ProductError::from_database(sqlx::Error::PoolTimedOut),
                Code::Unavailable,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
        Ok(())
    }

    #[test]
    fn messages_show_ids_plainly() -> Result<(), ValidationError> {
        let message = Status::from(ProductError::NotFound(ProductId::parse("id", "kettle")?))
            .message()
            .to_owned();
        assert_eq!(message, "product \"kettle\" not found");
        Ok(())
    }

    #[test]
    fn storage_errors_hide_their_text() {
        let status = Status::from(ProductError::from_database(sqlx::Error::Protocol(
            "SELECT secret FROM products".into(),
        )));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }
}
