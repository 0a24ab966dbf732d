//! Tools for the benchmarks under `bench/`, not for production: `grpc-load` drives
//! `ProductService/GetProduct` at a fixed number of concurrent streams and reports throughput and
//! latency percentiles as JSON; `otlp-sink` accepts OTLP trace exports over gRPC and counts the
//! spans, a local collector that costs the process it receives from nothing; `bare-product` serves
//! the product service's handler and store with a bare tonic server, none of Flotilla's layers, the
//! baseline the full stack is measured against.
//!
//! Written here because the load must check each call's gRPC status (h2load reads only the HTTP
//! status, and a failed gRPC call is HTTP 200) and the sink must speak OTLP; both are small.
