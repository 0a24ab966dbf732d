//! Discovery end to end, every component its own `flotilla serve` process: a registry, two product
//! instances on one PostgreSQL database, and a gateway that finds them through the registry.
//!
//! Under steady load through the gateway: requests spread over both instances; SIGTERM of one
//! fails no request (it deregisters, serves on for its delay, then drains); a new instance gets
//! traffic within a second of passing its check; SIGKILL of one stops costing requests within its
//! check interval plus timeout (the balancer ejects it at its first failed connection; the registry
//! drops it when its check fails).
//!
//! Which instance served a request is read from each instance's debug log of handled calls.

use std::time::{Duration, SystemTime};

use platform::discovery::Registry;
use platform::discovery::consul::{ConsulConfig, ConsulRegistry};
use test_support::postgres::TestDatabase;

use crate::TestResult;
use crate::fleet::{
    CHECK_INTERVAL, CHECK_TIMEOUT, Load, PATIENCE, failures, first_product_id, gateway,
    handled_calls, has, product, registry, until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_join_and_leave_the_gateways_rotation_without_failed_requests() -> TestResult {
    let Some(database) = TestDatabase::create().await else {
        return Ok(());
    };
    let dirs: Vec<tempfile::TempDir> = (0..5)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let registry = registry(dirs[0].path()).await;
    let registry_addr = registry.addr("registry", "http");
    let consul = ConsulRegistry::new(ConsulConfig {
        address: format!("http://{registry_addr}"),
        token: None,
    })?;
    let mut watch = consul.watch("product");

    let first = product(dirs[1].path(), database.url(), registry_addr, true, &[]).await;
    let second = product(dirs[2].path(), database.url(), registry_addr, false, &[]).await;
    let (first_addr, second_addr) = (
        first.addr("product", "grpc"),
        second.addr("product", "grpc"),
    );
    until(&mut watch, |set| {
        has(set, first_addr) && has(set, second_addr)
    })
    .await?;

    let gateway = gateway(dirs[3].path(), registry_addr, &[]).await;
    let gateway_addr = gateway.addr("gateway", "http");
    let id = first_product_id(gateway_addr).await?;

    // Spread: both instances serve a steady load.
    let load = Load::start(gateway_addr, &id);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = load.finish().await?;
    assert!(failures(&outcomes).is_empty(), "{:?}", failures(&outcomes));
    let (on_first, on_second) = (handled_calls(&first).len(), handled_calls(&second).len());
    let total = on_first + on_second;
    assert!(
        total >= outcomes.len(),
        "{total} calls for {} requests",
        outcomes.len()
    );
    assert!(
        on_first * 5 >= total && on_second * 5 >= total,
        "each instance serves at least a fifth: {on_first} and {on_second}"
    );

    // SIGTERM under load: deregister, serve on for the delay, drain; no request fails.
    let load = Load::start(gateway_addr, &id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.terminate();
    until(&mut watch, |set| !has(set, first_addr)).await?;
    let first_log_dir = dirs[1].path().to_owned();
    let status = first.wait(PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcomes = load.finish().await?;
    assert!(status.success(), "{status}");
    assert!(
        failures(&outcomes).is_empty(),
        "SIGTERM cost requests: {:?}\nlog of the stopped instance:\n{}",
        failures(&outcomes),
        std::fs::read_to_string(first_log_dir.join("flotilla.log")).unwrap_or_default()
    );

    // A new instance gets traffic within a second of passing its check.
    let load = Load::start(gateway_addr, &id);
    let third = product(dirs[4].path(), database.url(), registry_addr, false, &[]).await;
    let third_addr = third.addr("product", "grpc");
    let (_, passing_seen) = until(&mut watch, |set| has(set, third_addr)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first_call = handled_calls(&third).into_iter().min();
    let joined = first_call
        .and_then(|at| at.duration_since(passing_seen).ok())
        .unwrap_or_default();
    assert!(
        first_call.is_some() && joined < Duration::from_secs(1),
        "first call on the new instance at {first_call:?}, {joined:?} after it was seen passing"
    );

    // SIGKILL under load: no failure later than the check interval plus timeout after the kill.
    let before_kill = handled_calls(&second).len();
    third.kill();
    let killed_at = SystemTime::now();
    until(&mut watch, |set| !has(set, third_addr)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcomes = load.finish().await?;
    let allowed = killed_at + CHECK_INTERVAL + CHECK_TIMEOUT;
    let late: Vec<_> = failures(&outcomes)
        .into_iter()
        .filter(|outcome| outcome.at > allowed)
        .collect();
    assert!(late.is_empty(), "failures after {allowed:?}: {late:?}");
    assert!(
        handled_calls(&second).len() > before_kill,
        "the remaining instance kept serving"
    );
    gateway.stop().await;
    second.stop().await;
    registry.stop().await;
    Ok(())
}
