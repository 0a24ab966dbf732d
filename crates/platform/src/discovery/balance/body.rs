//! What a response body carries until its call is over: the call's in-flight count, and where to
//! report the call's gRPC status.
//!
//! The response headers end the latency sample, but not the call: a server stream, or a large
//! unary answer, keeps the endpoint busy until its last frame. The count drops when the trailers
//! (the last frame of a gRPC response) or the end of the body arrive, when the body fails, or when
//! it is dropped unread, whichever comes first (`resilience::watched` watches the body). The
//! status in the trailers (or its absence, or a body that breaks off) is what tells a good answer
//! from a failed one, for the endpoint's failure record; a body dropped unread says nothing (the
//! caller gave up).

use std::sync::Arc;

use super::Shared;
use super::endpoint::{CallGuard, Endpoint};
use super::verdict::verdict;
use crate::resilience::watched::{Ending, OnEnd};

/// A call in flight on an endpoint until its response body ends.
#[derive(Debug)]
pub(super) struct InFlight {
    /// Released when the body ends or is dropped.
    guard: CallGuard,
    /// Where to report the call's status; `None` when it came in the response headers and was
    /// reported then.
    report: Option<(Arc<Shared>, Arc<Endpoint>)>,
}

impl InFlight {
    /// `guard` released when the body ends, and the status found at its end reported to
    /// `report`.
    pub(super) fn new(guard: CallGuard, report: Option<(Arc<Shared>, Arc<Endpoint>)>) -> Self {
        Self { guard, report }
    }
}

impl OnEnd for InFlight {
    fn ended(self, ending: Ending<'_>) {
        let Some((shared, endpoint)) = &self.report else {
            return;
        };
        let found = match ending {
            Ending::Trailers(trailers) => {
                verdict(trailers).unwrap_or_else(|| Some(Err(MISSING_STATUS.to_owned())))
            }
            Ending::Bare => Some(Err(MISSING_STATUS.to_owned())),
            Ending::Broken => Some(Err("the answer broke off".to_owned())),
        };
        if let Some(found) = found {
            shared.conclude(endpoint, &self.guard, found);
        }
    }
}

/// A gRPC answer must end with a status; one without is a broken server (gRPC reports it as
/// `INTERNAL` or `UNKNOWN`, both failures).
const MISSING_STATUS: &str = "the answer ended without a gRPC status";
