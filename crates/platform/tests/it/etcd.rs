//! The etcd backend against a real etcd: the discovery contract, then what only etcd has — leases
//! that run out, an etcd that restarts or loses its data, several endpoints, foreign values.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use platform::discovery::consul::MAX_BACKOFF;
use platform::discovery::etcd::{EtcdConfig, EtcdRegistry, KEY_PREFIX, instance_key};
use platform::discovery::{HealthCheck, Instance, Registry};
use platform::proto::etcd::etcdserverpb::kv_client::KvClient;
use platform::proto::etcd::etcdserverpb::lease_client::LeaseClient;
use platform::proto::etcd::etcdserverpb::{
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
};
use platform::tonic::transport::Channel;
use test_support::discovery_contract::{
    Backend, Fallible, HealthServer, PATIENCE, instance_of, next_matching, registration, unique,
};
use test_support::etcd::Etcd;

type TestResult = Fallible<()>;

/// How long a watch may take to follow etcd again after an outage: its back-off between attempts
/// grows while etcd is down (up to `MAX_BACKOFF`), and the next attempt comes only after it.
const RECOVERY_PATIENCE: Duration = MAX_BACKOFF.saturating_add(PATIENCE);

/// The contract's backend: a fresh etcd, and a new [`EtcdRegistry`] (with its own keep-alive
/// tasks) per client.
async fn open() -> Option<Backend> {
    let etcd = Etcd::start().await?;
    let config = config(&etcd);
    let backend = Backend::new(
        move || Ok(Arc::new(EtcdRegistry::new(config.clone())?) as Arc<dyn Registry>),
        etcd,
    );
    match backend {
        Ok(backend) => Some(backend),
        Err(error) => panic!("a client of etcd: {error}"),
    }
}

test_support::discovery_contract!(crate::etcd::open);

fn config(etcd: &Etcd) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![etcd.client_url().to_owned()],
    }
}

fn client(etcd: &Etcd) -> Fallible<EtcdRegistry> {
    Ok(EtcdRegistry::new(config(etcd))?)
}

async fn kv(etcd: &Etcd) -> Fallible<KvClient<Channel>> {
    Ok(KvClient::connect(etcd.client_url().to_owned()).await?)
}

/// The value and lease of `key`, or `None` when it does not exist.
async fn read(etcd: &Etcd, key: &str) -> Fallible<Option<(Vec<u8>, i64)>> {
    let answer = kv(etcd)
        .await?
        .range(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..RangeRequest::default()
        })
        .await?
        .into_inner();
    Ok(answer.kvs.into_iter().next().map(|kv| (kv.value, kv.lease)))
}

async fn put(etcd: &Etcd, key: &str, value: &[u8]) -> TestResult {
    kv(etcd)
        .await?
        .put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            ..PutRequest::default()
        })
        .await?;
    Ok(())
}

/// Polls `key` until `wanted` holds for its value and lease, within [`PATIENCE`].
async fn read_until(
    etcd: &Etcd,
    key: &str,
    wanted: impl Fn(&Option<(Vec<u8>, i64)>) -> bool,
) -> Fallible<Option<(Vec<u8>, i64)>> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let current = read(etcd, key).await?;
        if wanted(&current) {
            return Ok(current);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{key} did not reach the wanted state; last: {current:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_instance_renews_its_lease_and_a_dropped_client_lets_it_run_out() -> TestResult {
    let Some(etcd) = Etcd::start().await else {
        return Ok(());
    };
    let service = unique("lease");
    let server = HealthServer::start().await?;
    let mut registration = registration(&service, "lease-1", &server, "1");
    registration.check = HealthCheck {
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        ..registration.check
    };
    let process = client(&etcd)?;
    process.register(&registration).await?;
    let watcher = client(&etcd)?;
    let mut watch = watcher.watch(&service);
    next_matching(&mut watch, PATIENCE, |set| set.len() == 1).await?;

    // The key carries a lease of interval + timeout.
    let key = instance_key(&service, &registration.id);
    let (_, lease) = read(&etcd, &key).await?.ok_or("the key is missing")?;
    let mut leases = LeaseClient::connect(etcd.client_url().to_owned()).await?;
    let granted = leases
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        })
        .await?
        .into_inner();
    assert_eq!(granted.granted_ttl, 3);
    assert_eq!(granted.keys, [key.as_bytes().to_vec()]);

    // Renewals keep it for twice its TTL, on the same lease.
    let ttl = Duration::from_secs(3);
    if let Ok(change) = tokio::time::timeout(2 * ttl, watch.next()).await {
        return Err(format!("a live instance changed: {change:?}").into());
    }
    assert_eq!(
        read(&etcd, &key).await?.map(|(_, lease)| lease),
        Some(lease)
    );

    // The process dies: nothing renews the lease, and etcd removes the key when it runs out.
    let dropped_at = tokio::time::Instant::now();
    drop(process);
    next_matching(
        &mut watch,
        ttl + Duration::from_secs(2),
        <[Instance]>::is_empty,
    )
    .await?;
    eprintln!(
        "the lease ran out {:?} after the client was dropped",
        dropped_at.elapsed()
    );
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_keeps_its_last_set_while_etcd_is_down_and_resumes_after() -> TestResult {
    let Some(mut etcd) = Etcd::start().await else {
        return Ok(());
    };
    let service = unique("outage");
    let server = HealthServer::start().await?;
    let first = registration(&service, "outage-1", &server, "1");
    let process = client(&etcd)?;
    process.register(&first).await?;
    let watcher = client(&etcd)?;
    let mut watch = watcher.watch(&service);
    next_matching(&mut watch, PATIENCE, |set| set.len() == 1).await?;

    etcd.kill();
    // Longer than the lease's TTL (2 s): nothing may be yielded, least of all an empty set.
    if let Ok(change) = tokio::time::timeout(Duration::from_secs(3), watch.next()).await {
        return Err(format!("the watch yielded while etcd was down: {change:?}").into());
    }

    etcd.restart().await;
    let restarted_at = tokio::time::Instant::now();
    let second = registration(&service, "outage-2", &server, "1");
    process.register(&second).await?;
    let mut both = vec![instance_of(&first), instance_of(&second)];
    both.sort();
    next_matching(&mut watch, RECOVERY_PATIENCE, |set| set == both.as_slice()).await?;
    eprintln!(
        "the watch saw both instances {:?} after etcd restarted",
        restarted_at.elapsed()
    );
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_granted_again_and_the_key_put_back() -> TestResult {
    let Some(etcd) = Etcd::start().await else {
        return Ok(());
    };
    let service = unique("revoked");
    let server = HealthServer::start().await?;
    let registration = registration(&service, "revoked-1", &server, "1");
    let process = client(&etcd)?;
    process.register(&registration).await?;
    let key = instance_key(&service, &registration.id);
    let (_, lease) = read(&etcd, &key).await?.ok_or("the key is missing")?;

    // Someone revokes the lease (as etcd does when it expires during a long network gap).
    LeaseClient::connect(etcd.client_url().to_owned())
        .await?
        .lease_revoke(LeaseRevokeRequest { id: lease })
        .await?;
    let back = read_until(&etcd, &key, |current| {
        current.as_ref().is_some_and(|(_, now)| *now != lease)
    })
    .await?;
    let (value, _) = back.ok_or("the key is missing")?;
    let value: serde_json::Value = serde_json::from_slice(&value)?;
    assert_eq!(value["id"], registration.id.as_str());

    let watcher = client(&etcd)?;
    let mut watch = watcher.watch(&service);
    let seen = next_matching(&mut watch, PATIENCE, |set| !set.is_empty()).await?;
    assert_eq!(seen, [instance_of(&registration)]);
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_that_lost_its_data_gets_the_instance_back() -> TestResult {
    let Some(mut etcd) = Etcd::start().await else {
        return Ok(());
    };
    let service = unique("amnesia");
    let server = HealthServer::start().await?;
    let first = registration(&service, "amnesia-1", &server, "1");
    let process = client(&etcd)?;
    process.register(&first).await?;
    let watcher = client(&etcd)?;
    let mut watch = watcher.watch(&service);
    next_matching(&mut watch, PATIENCE, |set| set.len() == 1).await?;

    etcd.restart_empty().await;
    // The instance's process puts it back on its own (its lease is unknown to the new etcd).
    let key = instance_key(&service, &first.id);
    read_until(&etcd, &key, Option::is_some).await?;

    // The old watch, whose revision is now in etcd's future, lists again and follows new changes.
    let second = registration(&service, "amnesia-2", &server, "1");
    process.register(&second).await?;
    let mut both = vec![instance_of(&first), instance_of(&second)];
    both.sort();
    next_matching(&mut watch, RECOVERY_PATIENCE, |set| set == both.as_slice()).await?;
    let mut fresh = watcher.watch(&service);
    assert_eq!(next_matching(&mut fresh, PATIENCE, |_| true).await?, both);
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_reported_as_etcd_makes_them() -> TestResult {
    let Some(etcd) = Etcd::start().await else {
        return Ok(());
    };
    let service = unique("quick");
    let server = HealthServer::start().await?;
    let registration = registration(&service, "quick-1", &server, "1");
    let process = client(&etcd)?;
    let watcher = client(&etcd)?;
    let mut watch = watcher.watch(&service);
    assert_eq!(next_matching(&mut watch, PATIENCE, |_| true).await?, []);

    // Far below the back-off's floor (500 ms), so a polling watch could not pass this.
    let quick = Duration::from_millis(300);
    process.register(&registration).await?;
    let registered_at = tokio::time::Instant::now();
    next_matching(&mut watch, quick, |set| set.len() == 1).await?;
    let seen_after = registered_at.elapsed();

    process.deregister(&registration.id).await?;
    let deregistered_at = tokio::time::Instant::now();
    next_matching(&mut watch, quick, <[Instance]>::is_empty).await?;
    eprintln!(
        "registration seen {seen_after:?}, deregistration {:?} after the call returned",
        deregistered_at.elapsed()
    );
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_skipped() -> TestResult {
    let Some(etcd) = Etcd::start().await else {
        return Ok(());
    };
    // A port nothing listens on: connections are refused.
    let dead = {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        format!("http://{}", listener.local_addr()?)
    };
    let service = unique("failover");
    let server = HealthServer::start().await?;
    let registration = registration(&service, "failover-1", &server, "1");
    for endpoints in [
        vec![dead.clone(), etcd.client_url().to_owned()],
        vec![etcd.client_url().to_owned(), dead.clone()],
    ] {
        let registry = EtcdRegistry::new(EtcdConfig { endpoints })?;
        registry.register(&registration).await?;
        let mut watch = registry.watch(&service);
        assert_eq!(
            next_matching(&mut watch, PATIENCE, |_| true).await?,
            [instance_of(&registration)]
        );
        registry.deregister(&registration.id).await?;
        next_matching(&mut watch, PATIENCE, <[Instance]>::is_empty).await?;
    }
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_do_not_parse_and_other_services_are_not_listed() -> TestResult {
    let Some(etcd) = Etcd::start().await else {
        return Ok(());
    };
    let service = unique("mixed");
    let server = HealthServer::start().await?;
    let ours = registration(&service, "mixed-1", &server, "1");
    let neighbour = registration(&format!("{service}-admin"), "admin-1", &server, "1");
    let process = client(&etcd)?;
    process.register(&ours).await?;
    process.register(&neighbour).await?;
    put(&etcd, &format!("{KEY_PREFIX}{service}/broken"), b"not json").await?;

    let watcher = client(&etcd)?;
    let mut watch = watcher.watch(&service);
    assert_eq!(
        next_matching(&mut watch, PATIENCE, |_| true).await?,
        [instance_of(&ours)]
    );

    // A value written by another tool in the documented layout is listed; a broken one is not.
    put(&etcd, &format!("{KEY_PREFIX}{service}/also-broken"), b"{}").await?;
    let foreign = serde_json::json!({
        "id": "foreign-1", "name": service, "address": "127.0.0.1", "port": 1,
    });
    put(
        &etcd,
        &format!("{KEY_PREFIX}{service}/foreign-1"),
        foreign.to_string().as_bytes(),
    )
    .await?;
    let seen = next_matching(&mut watch, PATIENCE, |set| set.len() > 1).await?;
    let foreign_instance = Instance {
        id: "foreign-1".into(),
        addr: ([127, 0, 0, 1], 1).into(),
        tags: Vec::new(),
        meta: BTreeMap::new(),
    };
    let mut expected = vec![instance_of(&ours), foreign_instance];
    expected.sort();
    assert_eq!(seen, expected);

    // A key whose value breaks is dropped from the set.
    put(
        &etcd,
        &format!("{KEY_PREFIX}{service}/foreign-1"),
        b"broken now",
    )
    .await?;
    assert_eq!(
        next_matching(&mut watch, PATIENCE, |set| set.len() == 1).await?,
        [instance_of(&ours)]
    );
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_another_client_registered_can_be_deregistered() -> TestResult {
    let Some(etcd) = Etcd::start().await else {
        return Ok(());
    };
    let service = unique("foreign");
    let server = HealthServer::start().await?;
    let registration = registration(&service, "foreign-1", &server, "1");
    let process = client(&etcd)?;
    process.register(&registration).await?;
    let operator = client(&etcd)?;
    let mut watch = operator.watch(&service);
    next_matching(&mut watch, PATIENCE, |set| set.len() == 1).await?;

    operator.deregister(&registration.id).await?;
    next_matching(&mut watch, PATIENCE, <[Instance]>::is_empty).await?;
    server.stop().await;
    Ok(())
}
