//! The one shape of a broken rule in a request, shared by every service's domain: which field, and
//! what a person should send instead. Each service maps it to INVALID_ARGUMENT in its `error.rs`.

/// A broken rule: which field, and what a person should send instead. The reason never repeats a
/// secret (a password, a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The field's name as the API spells it.
    pub field: &'static str,
    /// What is wrong, and what would be right.
    pub reason: String,
}

impl ValidationError {
    /// A broken rule of `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}
