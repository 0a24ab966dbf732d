//! Keeping a failing or slow instance from taking the system down with it: circuit breakers,
//! retries within a budget, deadlines, load shedding and fault injection, each a tower layer,
//! composed once in the client stack or in [`crate::serve`].

pub mod attempt;
pub mod breaker;
pub mod client;
pub mod deadline;
pub mod faults;
pub mod limit;
pub mod retry;
pub(crate) mod watched;
