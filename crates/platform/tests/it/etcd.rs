//! The etcd backend against a real etcd: the discovery contract, then what only etcd has — leases
//! that run out, an etcd that restarts or loses its data, several endpoints (one of them silent),
//! foreign values, and a keeper stopped while it puts its key again.
//!
//! A silent member is a [`Relay`] in front of the one etcd: listed first, it is the member the
//! client prefers, and it stops answering while etcd itself keeps serving the other endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use platform::discovery::etcd::{
    EtcdConfig, EtcdRegistry, InstanceValue, KEY_PREFIX, WATCH_MAX_BACKOFF, instance_key,
};
use platform::discovery::{HealthCheck, Instance, Registration, Registry};
use platform::proto::etcd::etcdserverpb::kv_client::KvClient;
use platform::proto::etcd::etcdserverpb::lease_client::LeaseClient;
use platform::proto::etcd::etcdserverpb::{
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
};
use platform::tonic::transport::Channel;
use test_support::discovery_contract::{
    Backend, Fallible, HealthServer, PATIENCE, instance_of, next_matching, registration, unique,
};
use test_support::etcd::{Etcd, Relay};

type TestResult = Fallible<()>;

/// How long a watch may take to follow etcd again after an outage: its back-off between attempts
/// grows while etcd is down (up to [`WATCH_MAX_BACKOFF`]), and the next attempt comes only after it.
const RECOVERY_PATIENCE: Duration = WATCH_MAX_BACKOFF.saturating_add(PATIENCE);

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

/// The seconds `lease` has left, or -1 when etcd does not know it (revoked or run out).
async fn time_to_live(etcd: &Etcd, lease: i64) -> Fallible<i64> {
    Ok(LeaseClient::connect(etcd.client_url().to_owned())
        .await?
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: lease,
            keys: false,
        })
        .await?
        .into_inner()
        .ttl)
}

/// `registration` with a lease of 2 s (a check interval of 1 s plus a timeout of 1 s), etcd's
/// minimum with its default timing, so running out is quick to provoke.
fn short_lived(registration: Registration) -> Registration {
    Registration {
        check: HealthCheck {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            ..registration.check
        },
        ..registration
    }
}

/// The TTL of [`short_lived`] registrations.
const SHORT_TTL: Duration = Duration::from_secs(2);

/// `registration` with a lease of 15 s (Consul's usual 10 s interval plus a 5 s timeout): longer
/// than a call that waits on a silent member, so running out cannot stand in for a revoke.
fn long_lived(registration: Registration) -> Registration {
    Registration {
        check: HealthCheck {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            ..registration.check
        },
        ..registration
    }
}

/// The lease of the put whose value is `value`, found in raw bytes a client sent: prost writes a
/// `PutRequest`'s fields in tag order, so its lease (field 3, a varint after the tag byte 0x18)
/// directly follows its value (field 2).
fn lease_of_put(sent: &[u8], value: &[u8]) -> Fallible<i64> {
    let end = sent
        .windows(value.len())
        .position(|window| window == value)
        .ok_or("the held bytes carry no put of the value")?
        + value.len();
    let mut rest = sent.get(end..).ok_or("nothing after the value")?;
    if rest.first() != Some(&0x18) {
        return Err("no lease after the put's value".into());
    }
    rest = &rest[1..];
    Ok(i64::try_from(prost::encoding::decode_varint(&mut rest)?)?)
}

/// Fails if the watch yields anything within `quiet`.
async fn stays_unchanged(
    watch: &mut platform::discovery::InstanceStream,
    quiet: Duration,
    what: &str,
) -> TestResult {
    match tokio::time::timeout(quiet, watch.next()).await {
        Ok(change) => Err(format!("{what}: the watched set changed: {change:?}").into()),
        Err(_) => Ok(()),
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
async fn unreachable_and_silent_endpoints_are_skipped() -> TestResult {
    let Some(etcd) = Etcd::start().await else {
        return Ok(());
    };
    // A port nothing listens on: connections are refused.
    let dead = {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        format!("http://{}", listener.local_addr()?)
    };
    // One that accepts connections and never answers.
    let silent = Relay::start(etcd.client_url()).await?;
    silent.silence();
    let service = unique("failover");
    let server = HealthServer::start().await?;
    let registration = registration(&service, "failover-1", &server, "1");
    for (endpoints, silent_first) in [
        (vec![dead.clone(), etcd.client_url().to_owned()], false),
        (vec![etcd.client_url().to_owned(), dead.clone()], false),
        (
            vec![silent.url().to_owned(), etcd.client_url().to_owned()],
            true,
        ),
    ] {
        let registry = EtcdRegistry::new(EtcdConfig { endpoints })?;
        registry.register(&registration).await?;
        let mut watch = registry.watch(&service);
        assert_eq!(
            next_matching(&mut watch, PATIENCE, |_| true).await?,
            [instance_of(&registration)]
        );
        if silent_first {
            // Its lease (2 s) is kept through the other member for longer than twice the TTL.
            stays_unchanged(
                &mut watch,
                2 * SHORT_TTL + Duration::from_secs(1),
                "silent first",
            )
            .await?;
        }
        registry.deregister(&registration.id).await?;
        next_matching(&mut watch, PATIENCE, <[Instance]>::is_empty).await?;
    }
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_goes_silent_does_not_cost_the_instance_its_lease() -> TestResult {
    let Some(etcd) = Etcd::start().await else {
        return Ok(());
    };
    let relay = Relay::start(etcd.client_url()).await?;
    let service = unique("silent");
    let server = HealthServer::start().await?;
    let registration = short_lived(registration(&service, "silent-1", &server, "1"));
    // The relay is listed first, so the registration and its renewals go through it.
    let process = EtcdRegistry::new(EtcdConfig {
        endpoints: vec![relay.url().to_owned(), etcd.client_url().to_owned()],
    })?;
    process.register(&registration).await?;
    let key = instance_key(&service, &registration.id);
    let (_, lease) = read(&etcd, &key).await?.ok_or("the key is missing")?;
    let watcher = client(&etcd)?;
    let mut watch = watcher.watch(&service);
    next_matching(&mut watch, PATIENCE, |set| set.len() == 1).await?;

    // The member stops answering; its connection stays open. Renewals must reach etcd through the
    // other endpoint before the lease runs out: the instance never leaves, on the same lease.
    relay.silence();
    let silenced_at = tokio::time::Instant::now();
    stays_unchanged(&mut watch, 3 * SHORT_TTL, "while a member was silent").await?;
    assert_eq!(
        read(&etcd, &key).await?.map(|(_, now)| now),
        Some(lease),
        "the lease was lost and granted again"
    );
    let remaining = time_to_live(&etcd, lease).await?;
    assert!(remaining > 0, "the lease is not renewed: {remaining}");
    eprintln!(
        "the instance stayed listed for {:?} (TTL {SHORT_TTL:?}) with its preferred member silent",
        silenced_at.elapsed()
    );

    process.deregister(&registration.id).await?;
    next_matching(&mut watch, PATIENCE, <[Instance]>::is_empty).await?;
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_follows_another_member_when_its_own_goes_away() -> TestResult {
    let Some(etcd) = Etcd::start().await else {
        return Ok(());
    };
    let relay = Relay::start(etcd.client_url()).await?;
    let service = unique("moving");
    let server = HealthServer::start().await?;
    let first = registration(&service, "moving-1", &server, "1");
    let process = client(&etcd)?;
    process.register(&first).await?;
    let watcher = EtcdRegistry::new(EtcdConfig {
        endpoints: vec![relay.url().to_owned(), etcd.client_url().to_owned()],
    })?;
    let mut watch = watcher.watch(&service);
    next_matching(&mut watch, PATIENCE, |set| set.len() == 1).await?;

    // The member the watch is open on goes away: its connection closes and nothing listens.
    drop(relay);
    let second = registration(&service, "moving-2", &server, "1");
    process.register(&second).await?;
    let mut both = vec![instance_of(&first), instance_of(&second)];
    both.sort();
    next_matching(&mut watch, PATIENCE, |set| set == both.as_slice()).await?;
    server.stop().await;
    Ok(())
}

/// A client of [`Relay`] (listed first) and etcd, with a [`long_lived`] registration made through
/// the relay, which then holds the client's next put of the registration's value. Returns the
/// client, the registration, its value and its lease.
async fn keeper_about_to_put_again(
    etcd: &Etcd,
    relay: &Relay,
    service: &str,
    server: &HealthServer,
) -> Fallible<(EtcdRegistry, Registration, Vec<u8>, i64)> {
    let registration = long_lived(registration(service, "racing-1", server, "1"));
    let process = EtcdRegistry::new(EtcdConfig {
        endpoints: vec![relay.url().to_owned(), etcd.client_url().to_owned()],
    })?;
    process.register(&registration).await?;
    let key = instance_key(service, &registration.id);
    let (value, lease) = read(etcd, &key).await?.ok_or("the key is missing")?;
    assert_eq!(
        value,
        serde_json::to_vec(&InstanceValue::from(&registration))?
    );
    relay.silence_from(&value);
    Ok((process, registration, value, lease))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistering_while_the_keeper_puts_the_key_again_leaves_no_key() -> TestResult {
    let Some(etcd) = Etcd::start().await else {
        return Ok(());
    };
    let relay = Relay::start(etcd.client_url()).await?;
    let service = unique("racing");
    let server = HealthServer::start().await?;
    let (process, registration, value, lease) =
        keeper_about_to_put_again(&etcd, &relay, &service, &server).await?;

    // The lease is lost (the keeper learns it at its next renewal, within a third of the TTL); it
    // grants a new one and puts the key with it, and that put is held on its way, as on a slow
    // link. Deregistering stops the keeper meanwhile.
    LeaseClient::connect(etcd.client_url().to_owned())
        .await?
        .lease_revoke(LeaseRevokeRequest { id: lease })
        .await?;
    let held = tokio::time::timeout(
        PATIENCE,
        relay.held_until(|sent| lease_of_put(sent, &value).is_ok()),
    )
    .await
    .map_err(|_| "the keeper did not put the key again")?;
    let pending = lease_of_put(&held, &value)?;
    assert_ne!(pending, lease);
    process.deregister(&registration.id).await?;

    // The held put's lease is revoked, so the put fails when it lands: no ghost instance.
    assert_eq!(
        time_to_live(&etcd, pending).await?,
        -1,
        "the new lease lives on"
    );
    relay.resume();
    let key = instance_key(&service, &registration.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        if let Some(found) = read(&etcd, &key).await? {
            return Err(format!("a deregistered instance's key came back: {found:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reregistering_while_the_old_keeper_puts_the_key_again_keeps_the_new_registration()
-> TestResult {
    let Some(etcd) = Etcd::start().await else {
        return Ok(());
    };
    let relay = Relay::start(etcd.client_url()).await?;
    let service = unique("rebinding");
    let server = HealthServer::start().await?;
    let (process, first, value, lease) =
        keeper_about_to_put_again(&etcd, &relay, &service, &server).await?;
    let watcher = client(&etcd)?;
    let mut watch = watcher.watch(&service);
    next_matching(&mut watch, PATIENCE, |set| set.len() == 1).await?;

    LeaseClient::connect(etcd.client_url().to_owned())
        .await?
        .lease_revoke(LeaseRevokeRequest { id: lease })
        .await?;
    let held = tokio::time::timeout(
        PATIENCE,
        relay.held_until(|sent| lease_of_put(sent, &value).is_ok()),
    )
    .await
    .map_err(|_| "the keeper did not put the key again")?;
    let pending = lease_of_put(&held, &value)?;

    // Registering the id again while the old keeper's put is on its way: when that put lands it
    // must not bind the key to the old keeper's lease, which nobody renews any more.
    let second = long_lived(registration(&service, "racing-1", &server, "2"));
    assert_eq!(second.id, first.id);
    process.register(&second).await?;
    assert_eq!(
        time_to_live(&etcd, pending).await?,
        -1,
        "the old lease lives on"
    );
    relay.resume();
    next_matching(&mut watch, PATIENCE, |set| set == [instance_of(&second)]).await?;
    stays_unchanged(
        &mut watch,
        Duration::from_secs(1),
        "after the held put was let through",
    )
    .await?;
    let key = instance_key(&service, &second.id);
    let (_, bound) = read(&etcd, &key).await?.ok_or("the key is missing")?;
    assert!(
        time_to_live(&etcd, bound).await? > 0,
        "the key's lease is not kept alive"
    );
    process.deregister(&second.id).await?;
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
