//! platform's integration tests, one binary: what needs real parts outside the crate.
//!
//! - `etcd`: the etcd discovery backend against a real etcd (`test_support::etcd`), through the
//!   backend-independent discovery contract and etcd's own failure cases. The same contract runs
//!   for the Consul backend in the registry crate, against the embedded registry.
//!
//! Time is real here: etcd is another process. Waits poll the watch itself (which answers as soon as
//! etcd reports a change) with a stated patience; the few fixed waits check that nothing changes
//! for a stated time.

mod etcd;
