//! Client-side retries, only where they are safe and only within a budget.
//!
//! Most failed attempts in Flotilla are an instance going away (a restart, a deploy, a reset
//! connection) or shedding load, and the same call on another instance a few milliseconds later
//! succeeds. Retrying carelessly is how a small outage becomes a large one, though: a retry of a
//! write that did reach the server does the write twice, and retries sent to an overloaded service
//! add to its load exactly when it can least take it (a retry storm). The rules here follow the
//! gRPC retry design (gRFC A6, "gRPC Retry Design") and linkerd's retry budgets.
//!
//! # What is retried
//!
//! Only unary methods this layer knows from the protos ([`IdempotentMethods`]); a streaming or
//! unknown method passes through untouched (its body is never buffered). Then, by outcome:
//!
//! - the balancer's [`AttemptError`](crate::resilience::attempt::AttemptError) with
//!   [`Reach::NotSent`](crate::resilience::attempt::Reach::NotSent) on an instance (the connection
//!   could not be opened, the server refused the stream unread): any method, since no server saw
//!   the request; not `DEADLINE_EXCEEDED`, which will not get better, and not when no instance
//!   could take it at all (the balancer has already waited for one as long as it should);
//! - only for methods marked `option idempotency_level = NO_SIDE_EFFECTS;` or `IDEMPOTENT` (the
//!   protobuf option; Flotilla's protos mark their reads and `Revoke`): a connection lost after
//!   the request went out (`Reach::MaybeSent` with `UNAVAILABLE`), an answer of `UNAVAILABLE`,
//!   and an answer of `RESOURCE_EXHAUSTED` with a `grpc-retry-pushback-ms` header (a server
//!   shedding load, as [`crate::resilience::limit`] does; without the header it is a quota, such
//!   as the login limit, which a retry only spends faster).
//!
//! Everything else is final and reaches the caller unchanged: success, client errors such as
//! `NOT_FOUND`, `INTERNAL`, `DEADLINE_EXCEEDED`, errors that are not the balancer's, and answers
//! whose status comes in the trailers: only the status of a trailers-only answer is read (how
//! servers report an error before any message), since the layer never waits for a body.
//!
//! # How
//!
//! - **At most [`RetryConfig::max_retries`] retries** (2: three attempts), each with the gRPC
//!   header `grpc-previous-rpc-attempts` and an
//!   [`AvoidInstances`](crate::resilience::attempt::AvoidInstances) extension naming every
//!   instance an earlier attempt failed on, so the balancer sends it elsewhere when it can.
//! - **Back-off with full jitter** before each retry: a random wait up to
//!   `min(backoff_max, backoff · 2^(n−1))` (Marc Brooker, "Exponential Backoff And Jitter", 2015),
//!   so clients that failed together do not come back together. A server's pushback
//!   (`grpc-retry-pushback-ms`) replaces the draw, as A6 says; a malformed one means "do not
//!   retry", and one longer than the longest back-off is not waited for either: the caller gets
//!   the answer at once and can decide.
//! - **One deadline**: computed once from the call's `grpc-timeout` and the inherited deadline
//!   ([`deadline::outgoing`](crate::resilience::deadline::outgoing)); each attempt carries what is
//!   left of it, and no retry is made when what is left is shorter than the wait plus what the
//!   failed attempt took.
//! - **A budget** ([`tower::retry::budget::TpsBudget`], the budget of Finagle, linkerd and
//!   tower): each call deposits, each retry withdraws; retries may be 20 % of the calls of the
//!   last 10 s plus 10 a second. When an upstream fails outright, its callers' load on it grows
//!   by a fifth (and the small reserve), not threefold. One layer (one budget) per upstream service per process.
//! - **Never a retry of a retry**: a server that is serving a retry makes no retries of its own
//!   ([`RetryMarkerLayer`], [`serving_a_retry`]); three tries at each of three hops would be 27
//!   calls to the last one.
//!
//! It sits below the circuit breaker, which sees one outcome per call (the last attempt's) and
//! whose refusals are never retried, and above the balancer, which picks an instance per attempt.
//!
//! Why not tower's `Retry` with a `Policy`: a unary request's body has to be collected
//! asynchronously before the first attempt, and each attempt needs the deadline, the instances to
//! avoid and the attempt count; the loop that does this is shorter than the adapters around
//! tower's. Its budget is used as it is.
//!
//! Written from the descriptions above; no code was copied.

mod idempotency;
mod layer;
mod marker;
mod policy;
#[cfg(test)]
mod tests;

pub use idempotency::{IdempotentMethods, MethodKind};
pub use layer::{JitterSource, Retry, RetryFuture, RetryLayer, RetryStats};
pub use marker::{PREVIOUS_ATTEMPTS, RetryMarker, RetryMarkerLayer, is_a_retry, serving_a_retry};
pub use policy::{RETRY_SETTINGS, RetryConfig};
