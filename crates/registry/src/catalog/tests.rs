//! The catalog's rules with time passed in: indexes, TTL reports and expiry, re-registration and
//! reaping.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::domain::{CheckRegistration, ServiceRegistration};

fn node() -> Node {
    Node {
        id: "00000000-0000-0000-0000-000000000001".into(),
        name: "test".into(),
        address: "127.0.0.1".into(),
        datacenter: "dc1".into(),
    }
}

fn ttl_service(id: &str, name: &str, dcsa: Option<&str>) -> ServiceDefinition {
    let dcsa = dcsa
        .map(|text| crate::duration::parse(text).unwrap_or_default())
        .unwrap_or_default();
    ServiceRegistration {
        id: id.into(),
        name: name.into(),
        checks: vec![CheckRegistration {
            check_id: format!("{id}-ttl"),
            ttl: 10_000_000_000,
            deregister_critical_service_after: dcsa,
            ..CheckRegistration::default()
        }],
        ..ServiceRegistration::default()
    }
    .validate()
    .unwrap_or_else(|error| panic!("{error}"))
}

fn status_of(catalog: &Catalog, name: &str) -> Vec<&'static str> {
    let (_, entries) = catalog.health(&node(), name, false, &[]);
    entries
        .iter()
        .map(|entry| entry.checks.last().map_or("none", |check| check.status))
        .collect()
}

#[test]
fn indexes_only_grow_and_name_indexes_move_with_their_service() -> Result<(), CheckIdTaken> {
    let stop = CancellationToken::new();
    let now = Instant::now();
    let mut catalog = Catalog::new(u64::MAX / 2);
    let start = catalog.index();
    assert!(start > u64::MAX / 2, "starts above the stored index");
    catalog.register(ttl_service("a1", "a", None), now, &stop)?;
    let (a_index, _) = catalog.health(&node(), "a", false, &[]);
    assert!(a_index > start);
    catalog.register(ttl_service("b1", "b", None), now, &stop)?;
    let (a_after_b, _) = catalog.health(&node(), "a", false, &[]);
    assert_eq!(a_after_b, a_index, "a change to b does not move a's index");
    let (missing, entries) = catalog.health(&node(), "nobody", false, &[]);
    assert!(entries.is_empty());
    assert_eq!(missing, catalog.catalog_services().0);
    assert!(catalog.deregister("a1").is_ok());
    let (a_gone, _) = catalog.health(&node(), "a", false, &[]);
    assert!(
        a_gone > a_index,
        "removing the last instance still moves the index"
    );
    assert!(catalog.index() >= a_gone);
    Ok(())
}

#[test]
fn ttl_reports_set_status_and_output_and_expire() -> Result<(), Box<dyn std::error::Error>> {
    let stop = CancellationToken::new();
    let start = Instant::now();
    let mut catalog = Catalog::new(0);
    let runners = catalog.register(ttl_service("a1", "a", None), start, &stop)?;
    assert_eq!(
        status_of(&catalog, "a"),
        ["critical"],
        "new checks start critical"
    );
    assert!(catalog.report_ttl("a1-ttl", Status::Passing, "fine", start)?);
    assert!(
        !catalog.report_ttl("a1-ttl", Status::Passing, "fine", start)?,
        "no change, no index"
    );
    assert_eq!(status_of(&catalog, "a"), ["passing"]);
    let (_, passing) = catalog.health(&node(), "a", true, &[]);
    assert_eq!(passing.len(), 1);
    assert!(catalog.report_ttl("a1-ttl", Status::Warning, "slow", start)?);
    let (_, passing) = catalog.health(&node(), "a", true, &[]);
    assert!(passing.is_empty(), "warning is not passing");

    let later = start + Duration::from_secs(11);
    assert!(!catalog.expire_ttl(runners[0].run_ref(), start + Duration::from_secs(9)));
    assert!(catalog.expire_ttl(runners[0].run_ref(), later));
    let checks = catalog.agent_checks(&node());
    let check = &checks["a1-ttl"];
    assert_eq!(check.status, "critical");
    assert_eq!(
        check.output,
        "TTL expired (last output before timeout follows): slow"
    );
    assert_eq!(
        catalog.ttl_deadline(runners[0].run_ref()),
        Some(later + Duration::from_secs(10)),
        "armed again"
    );
    assert!(!catalog.expire_ttl(runners[0].run_ref(), later + Duration::from_secs(20)));
    Ok(())
}

#[test]
fn ttl_reports_name_consuls_errors() {
    let stop = CancellationToken::new();
    let now = Instant::now();
    let mut catalog = Catalog::new(0);
    let mut grpc = ttl_service("g1", "g", None);
    grpc.checks[0].kind = CheckKind::Grpc {
        target: "127.0.0.1:1".into(),
        use_tls: false,
        tls_skip_verify: false,
    };
    assert!(catalog.register(grpc, now, &stop).is_ok());
    assert_eq!(
        catalog
            .report_ttl("nope", Status::Passing, "", now)
            .map_err(|e| e.to_string()),
        Err(
            "Unknown check ID \"nope\". Ensure that the check ID is passed, not the check name."
                .into()
        )
    );
    assert_eq!(
        catalog
            .report_ttl("g1-ttl", Status::Passing, "", now)
            .map_err(|e| e.to_string()),
        Err("CheckID \"g1-ttl\" does not have associated TTL".into())
    );
    assert_eq!(
        catalog.deregister("nope").map_err(|e| e.to_string()),
        Err("Unknown service ID \"nope\". Ensure that the service ID is passed, not the service name.".into())
    );
}

#[test]
fn re_registering_replaces_the_instance_and_keeps_unchanged_checks()
-> Result<(), Box<dyn std::error::Error>> {
    let stop = CancellationToken::new();
    let now = Instant::now();
    let mut catalog = Catalog::new(0);
    let first = catalog.register(ttl_service("a1", "a", None), now, &stop)?;
    catalog.report_ttl("a1-ttl", Status::Passing, "", now)?;
    let mut second = ttl_service("a1", "a", None);
    second.port = 8080;
    let runners = catalog.register(second.clone(), now, &stop)?;
    assert!(first[0].stop.is_cancelled(), "the old run stops");
    assert!(!runners[0].stop.is_cancelled());
    assert_eq!(
        status_of(&catalog, "a"),
        ["passing"],
        "an unchanged check keeps its status"
    );
    assert_eq!(catalog.agent_services(&node())["a1"].port, 8080);

    second.checks[0].kind = CheckKind::Ttl {
        ttl: Duration::from_secs(30),
    };
    catalog.register(second, now, &stop)?;
    assert_eq!(
        status_of(&catalog, "a"),
        ["critical"],
        "a changed check starts again"
    );
    assert_eq!(catalog.agent_services(&node()).len(), 1);
    Ok(())
}

#[test]
fn a_check_id_cannot_move_between_instances() -> Result<(), CheckIdTaken> {
    let stop = CancellationToken::new();
    let now = Instant::now();
    let mut catalog = Catalog::new(0);
    catalog.register(ttl_service("a1", "a", None), now, &stop)?;
    let mut thief = ttl_service("b1", "b", None);
    thief.checks[0].id = "a1-ttl".into();
    assert_eq!(
        catalog.register(thief, now, &stop).map(|_| ()),
        Err(CheckIdTaken {
            check: "a1-ttl".into(),
            service: "a1".into()
        })
    );
    Ok(())
}

#[test]
fn instances_critical_too_long_are_reaped() -> Result<(), Box<dyn std::error::Error>> {
    let stop = CancellationToken::new();
    let start = Instant::now();
    let mut catalog = Catalog::new(0);
    let runners = catalog.register(ttl_service("a1", "a", Some("30s")), start, &stop)?;
    catalog.register(ttl_service("a2", "a", None), start, &stop)?;
    let (removed, next) = catalog.reap(start + Duration::from_secs(29));
    assert!(removed.is_empty());
    assert_eq!(next, Some(start + Duration::from_secs(30)));

    // Passing stops the clock; critical again starts it afresh.
    let t1 = start + Duration::from_secs(20);
    catalog.report_ttl("a1-ttl", Status::Passing, "", t1)?;
    assert_eq!(
        catalog.reap(start + Duration::from_secs(40)),
        (Vec::new(), None)
    );
    let t2 = start + Duration::from_secs(50);
    catalog.report_ttl("a1-ttl", Status::Critical, "", t2)?;
    let (removed, next) = catalog.reap(t2 + Duration::from_secs(30));
    assert_eq!(removed, ["a1"]);
    assert_eq!(next, None);
    assert!(runners[0].stop.is_cancelled());
    assert_eq!(
        catalog.agent_services(&node()).len(),
        1,
        "a2 has no deadline"
    );
    Ok(())
}

#[test]
fn restored_checks_start_critical() -> Result<(), CheckIdTaken> {
    let stop = CancellationToken::new();
    let now = Instant::now();
    let mut before = Catalog::new(0);
    let mut definition = ttl_service("a1", "a", None);
    definition.checks[0].initial_status = Some(Status::Passing);
    before.register(definition, now, &stop)?;
    assert_eq!(status_of(&before, "a"), ["passing"]);
    let mut after = Catalog::new(before.index());
    let runners = after.restore(before.definitions(), now, &stop);
    assert_eq!(runners.len(), 1);
    assert_eq!(status_of(&after, "a"), ["critical"]);
    assert!(after.index() > before.index());
    Ok(())
}

#[test]
fn health_filters_by_passing_and_tags() -> Result<(), Box<dyn std::error::Error>> {
    let stop = CancellationToken::new();
    let now = Instant::now();
    let mut catalog = Catalog::new(0);
    let mut tagged = ttl_service("a1", "a", None);
    tagged.tags = vec!["primary".into(), "v1".into()];
    catalog.register(tagged, now, &stop)?;
    catalog.register(ttl_service("a2", "a", None), now, &stop)?;
    catalog.report_ttl("a2-ttl", Status::Passing, "", now)?;
    let ids = |entries: Vec<HealthEntry>| -> Vec<String> {
        entries.into_iter().map(|entry| entry.service.id).collect()
    };
    assert_eq!(
        ids(catalog.health(&node(), "a", false, &[]).1),
        ["a1", "a2"]
    );
    assert_eq!(ids(catalog.health(&node(), "a", true, &[]).1), ["a2"]);
    assert_eq!(
        ids(catalog.health(&node(), "a", false, &["primary".into()]).1),
        ["a1"]
    );
    let (_, names) = catalog.catalog_services();
    assert_eq!(names["a"], ["primary", "v1"]);
    Ok(())
}
