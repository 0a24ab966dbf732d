//! Whether an answer counts for or against the instance that gave it, from its gRPC status.
//!
//! The same classification as the circuit breakers' ([`classify_headers`]): only codes saying
//! the server could not answer are failures (`RESOURCE_EXHAUSTED` only from a server shedding
//! load, not a quota); client errors show a server working correctly, and `CANCELLED` (the caller
//! gave up) says nothing.

use http::HeaderMap;

use crate::resilience::breaker::{Outcome, classify_headers};

/// `Ok` for a good answer, the failure's description for a failed one.
pub(super) type Verdict = Result<(), String>;

/// The verdict of the `grpc-status` in `headers` (trailers, or the headers of a trailers-only
/// answer): `None` when there is no status there, `Some(None)` when the status says nothing
/// about the instance.
pub(super) fn verdict(headers: &HeaderMap) -> Option<Option<Verdict>> {
    let code = crate::resilience::watched::grpc_status(headers)?;
    Some(match classify_headers(headers)? {
        Outcome::Success => Some(Ok(())),
        Outcome::Failure => Some(Err(format!("answered {}", code.description()))),
        Outcome::Ignored => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from_static(code));
        headers
    }

    #[test]
    fn server_side_failures_count_against_the_instance_and_client_errors_do_not() {
        assert_eq!(verdict(&HeaderMap::new()), None);
        assert_eq!(verdict(&status("0")), Some(Some(Ok(()))));
        // NOT_FOUND, PERMISSION_DENIED: the server works.
        assert_eq!(verdict(&status("5")), Some(Some(Ok(()))));
        assert_eq!(verdict(&status("7")), Some(Some(Ok(()))));
        // UNAVAILABLE, INTERNAL.
        for failure in ["14", "13"] {
            assert!(
                matches!(verdict(&status(failure)), Some(Some(Err(_)))),
                "{failure}"
            );
        }
        // RESOURCE_EXHAUSTED: shedding is a failure, a quota is the answer of a working server.
        let mut shed = status("8");
        shed.insert(
            "grpc-retry-pushback-ms",
            http::HeaderValue::from_static("100"),
        );
        assert!(matches!(verdict(&shed), Some(Some(Err(_)))));
        assert_eq!(verdict(&status("8")), Some(Some(Ok(()))));
        // CANCELLED says nothing.
        assert_eq!(verdict(&status("1")), Some(None));
    }
}
