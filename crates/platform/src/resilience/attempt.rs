//! What one attempt of a call tells the layers above the balancer, and what they tell it back.
//!
//! A call from a Flotilla client goes through the breaker, then the retry layer, then the
//! balancer ([`crate::discovery::balance::Balanced`]), which sends each attempt to one instance.
//! The retry layer needs to know which instance an attempt went to (to send the next attempt
//! elsewhere) and whether a failed attempt can have reached a server at all (only then is a retry
//! of a method with side effects unsafe). The balancer reports both:
//!
//! - on an answer, the response's extensions hold an [`Attempted`] naming the instance;
//! - on a failure, the error is an [`AttemptError`] holding the `tonic::Status`, the instance (if
//!   one was chosen) and whether the request may have reached it. tonic's generated clients find
//!   the status through the error's `source()`, as they do for any error wrapping one.
//!
//! The retry layer asks the balancer to steer clear of instances with an [`AvoidInstances`]
//! request extension.

use std::fmt;
use std::sync::Arc;

use tonic::Status;

/// Request extension: instances this attempt should not go to while another instance can take it
/// (the ones earlier attempts of the same call failed on).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AvoidInstances(Vec<Arc<str>>);

impl AvoidInstances {
    /// Adds an instance id.
    pub fn add(&mut self, instance: Arc<str>) {
        if !self.contains(&instance) {
            self.0.push(instance);
        }
    }

    /// Whether the instance with this id is to be avoided.
    pub fn contains(&self, instance: &str) -> bool {
        self.0.iter().any(|avoided| &**avoided == instance)
    }

    /// Whether there is nothing to avoid.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Response extension: the instance an attempt was answered by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    /// The instance's id in discovery.
    pub instance: Arc<str>,
}

/// Whether a failed attempt can have reached a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Certainly not: no instance was chosen, the connection could not be opened, or the server
    /// refused the stream before reading it (HTTP/2 `REFUSED_STREAM`). Safe to retry any method.
    NotSent,
    /// Perhaps: the connection failed after the request went out, so the server may have acted
    /// on it. Only idempotent methods may be retried.
    MaybeSent,
}

/// A failed attempt, as the balancer reports it.
#[derive(Debug)]
pub struct AttemptError {
    status: Status,
    instance: Option<Arc<str>>,
    reach: Reach,
}

impl AttemptError {
    /// An attempt that failed with `status`, sent to `instance` (if one was chosen), reaching it as
    /// `reach` says.
    pub fn new(status: Status, instance: Option<Arc<str>>, reach: Reach) -> Self {
        Self {
            status,
            instance,
            reach,
        }
    }

    /// A failure before any instance was chosen (no instance, discovery silent, deadline passed).
    pub fn unsent(status: Status) -> Self {
        Self::new(status, None, Reach::NotSent)
    }

    /// The status the caller sees.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The instance the attempt went to, if one was chosen.
    pub fn instance(&self) -> Option<&Arc<str>> {
        self.instance.as_ref()
    }

    /// Whether the request can have reached a server.
    pub fn reach(&self) -> Reach {
        self.reach
    }

    /// The status, for a caller that does not care about the rest.
    pub fn into_status(self) -> Status {
        self.status
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.status, f)
    }
}

impl std::error::Error for AttemptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonic_finds_the_status_inside() {
        let error = AttemptError::new(
            Status::unavailable("instance gone"),
            Some(Arc::from("product-1")),
            Reach::MaybeSent,
        );
        let status = Status::from_error(Box::new(error));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "instance gone");
    }

    #[test]
    fn an_instance_is_avoided_once() {
        let mut avoid = AvoidInstances::default();
        assert!(avoid.is_empty());
        avoid.add(Arc::from("a"));
        avoid.add(Arc::from("a"));
        assert!(avoid.contains("a"));
        assert!(!avoid.contains("b"));
        assert_eq!(avoid, AvoidInstances(vec![Arc::from("a")]));
    }
}
