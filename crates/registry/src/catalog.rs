//! The registry's state: service instances, their checks' statuses, and the indexes blocking
//! queries wait on. Plain data behind one lock in [`crate::registry`]; every change happens here,
//! with the time passed in, so the rules are tested without a clock or a socket.
//!
//! **Indexes.** One global index counts every change. It never goes backwards and is never 0: each
//! change takes `max(index + 1, now in Unix milliseconds)`, and a restart starts above both the
//! stored index and the clock, so even changes lost in a crash (after their answer, before the
//! file was written) are never handed out twice. A health query's index is that of the last change
//! to an instance (or check) of that service name, so a watcher wakes only for its own service;
//! for a name with no instances it is the catalog index (last registration or removal), which is
//! never below the name's last index. `GET /v1/catalog/services` answers with the catalog index.
//!
//! **What counts as a change:** a registration, a removal, a check's status changing, and a TTL
//! report whose status or note differs. A periodic check whose output changes but whose status does
//! not updates `Output` without a new index, as a Consul agent defers such output-only updates.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::{CheckDefinition, CheckKind, ServiceDefinition, Status, truncate_output};
use crate::duration;
use crate::json::{
    AgentServiceJson, CheckJson, DefinitionJson, HealthEntry, Node, NodeJson, ServiceJson,
    WeightsJson,
};

/// Consul's node-level check, present on every node and always passing on this one.
const SERF_CHECK_ID: &str = "serfHealth";

/// A check to start running (a probe loop, or a TTL timer).
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    /// The instance it belongs to.
    pub(crate) service_id: String,
    /// What to run.
    pub(crate) check: CheckDefinition,
    /// Identifies this run: results of a replaced run are ignored.
    pub(crate) run_id: u64,
    /// Cancelled when the check is replaced or removed, and at shutdown.
    pub(crate) stop: CancellationToken,
}

impl Runner {
    /// Which run this is, for results.
    pub(crate) fn run_ref(&self) -> RunRef<'_> {
        RunRef {
            service_id: &self.service_id,
            check_id: &self.check.id,
            run_id: self.run_id,
        }
    }
}

/// Which run of which check a result is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunRef<'a> {
    /// The instance.
    pub(crate) service_id: &'a str,
    /// The check.
    pub(crate) check_id: &'a str,
    /// The run.
    pub(crate) run_id: u64,
}

/// Why a TTL report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    /// No check has that ID (Consul: 404).
    #[error("Unknown check ID {0:?}. Ensure that the check ID is passed, not the check name.")]
    UnknownCheck(String),
    /// The check is not a TTL check (Consul: 500).
    #[error("CheckID {0:?} does not have associated TTL")]
    NotTtl(String),
}

/// Why a service could not be removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Unknown service ID {0:?}. Ensure that the service ID is passed, not the service name.")]
pub struct UnknownService(pub String);

/// A registration that would take over another instance's check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid check: CheckID {check:?} already belongs to service {service:?}")]
pub struct CheckIdTaken {
    /// The check ID.
    pub check: String,
    /// The instance that has it.
    pub service: String,
}

#[derive(Debug)]
struct CheckState {
    definition: CheckDefinition,
    status: Status,
    output: String,
    create_index: u64,
    modify_index: u64,
    /// When it last became critical, for `DeregisterCriticalServiceAfter`.
    critical_since: Option<Instant>,
    /// When a TTL check expires unless reported on.
    ttl_deadline: Option<Instant>,
    run_id: u64,
    stop: CancellationToken,
}

#[derive(Debug)]
struct ServiceState {
    definition: ServiceDefinition,
    create_index: u64,
    modify_index: u64,
    checks: Vec<CheckState>,
}

/// All instances and checks, with their indexes.
#[derive(Debug)]
pub(crate) struct Catalog {
    index: u64,
    catalog_index: u64,
    /// Per service name with at least one instance: the index of its last change.
    name_index: HashMap<String, u64>,
    services: BTreeMap<String, ServiceState>,
    next_run_id: u64,
    /// Index at which this node entered the catalog (this start).
    node_index: u64,
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Catalog {
    /// An empty catalog whose index starts above `stored_index` (from the data file) and the clock.
    pub(crate) fn new(stored_index: u64) -> Self {
        let index = stored_index.saturating_add(1).max(unix_millis()).max(1);
        Self {
            index,
            catalog_index: index,
            name_index: HashMap::new(),
            services: BTreeMap::new(),
            next_run_id: 0,
            node_index: index,
        }
    }

    /// The global index: the last change anywhere.
    pub(crate) fn index(&self) -> u64 {
        self.index
    }

    fn next_index(&mut self) -> u64 {
        self.index = self.index.saturating_add(1).max(unix_millis());
        self.index
    }

    /// Marks a change to `name`'s instances.
    fn touch(&mut self, name: &str) -> u64 {
        let index = self.next_index();
        self.name_index.insert(name.to_owned(), index);
        index
    }

    /// After an instance of `name` left: keep the name's index moving, or forget it when no
    /// instance is left (its queries then use the catalog index, which is at least as high).
    fn forget_if_empty(&mut self, name: &str, index: u64) {
        if self.services.values().any(|s| s.definition.name == name) {
            self.name_index.insert(name.to_owned(), index);
        } else {
            self.name_index.remove(name);
        }
    }

    fn new_run(&mut self, parent: &CancellationToken) -> (u64, CancellationToken) {
        self.next_run_id += 1;
        (self.next_run_id, parent.child_token())
    }

    /// Adds an instance, or replaces the one with the same ID with its checks. A check whose ID
    /// and definition are unchanged keeps its status and output (so a service that re-registers
    /// does not flap); any other check starts at its `Status`, or critical.
    ///
    /// # Errors
    /// [`CheckIdTaken`] when a check ID belongs to another instance.
    pub(crate) fn register(
        &mut self,
        definition: ServiceDefinition,
        now: Instant,
        parent: &CancellationToken,
    ) -> Result<Vec<Runner>, CheckIdTaken> {
        for check in &definition.checks {
            if let Some(owner) = self.services.values().find(|service| {
                service.definition.id != definition.id
                    && service.checks.iter().any(|c| c.definition.id == check.id)
            }) {
                return Err(CheckIdTaken {
                    check: check.id.clone(),
                    service: owner.definition.id.clone(),
                });
            }
        }
        let previous = self.services.remove(&definition.id);
        let index = self.next_index();
        self.catalog_index = index;
        let mut old_checks = previous
            .as_ref()
            .map(|service| {
                service
                    .checks
                    .iter()
                    .map(|check| {
                        check.stop.cancel();
                        (check.definition.id.clone(), check)
                    })
                    .collect::<HashMap<_, _>>()
            })
            .unwrap_or_default();
        let mut checks = Vec::with_capacity(definition.checks.len());
        let mut runners = Vec::with_capacity(definition.checks.len());
        for check in &definition.checks {
            let (run_id, stop) = self.new_run(parent);
            let kept = old_checks
                .remove(&check.id)
                .filter(|old| old.definition == *check);
            let state = match kept {
                Some(old) => CheckState {
                    definition: check.clone(),
                    status: old.status,
                    output: old.output.clone(),
                    create_index: old.create_index,
                    modify_index: old.modify_index,
                    critical_since: old.critical_since,
                    ttl_deadline: old.ttl_deadline,
                    run_id,
                    stop: stop.clone(),
                },
                None => {
                    let status = check.initial_status.unwrap_or(Status::Critical);
                    CheckState {
                        definition: check.clone(),
                        status,
                        output: String::new(),
                        create_index: index,
                        modify_index: index,
                        critical_since: (status == Status::Critical).then_some(now),
                        ttl_deadline: ttl_of(check).map(|ttl| now + ttl),
                        run_id,
                        stop: stop.clone(),
                    }
                }
            };
            checks.push(state);
            runners.push(Runner {
                service_id: definition.id.clone(),
                check: check.clone(),
                run_id,
                stop,
            });
        }
        let old_name = previous
            .as_ref()
            .map(|service| service.definition.name.clone());
        let create_index = previous.map_or(index, |service| service.create_index);
        let name = definition.name.clone();
        self.services.insert(
            definition.id.clone(),
            ServiceState {
                definition,
                create_index,
                modify_index: index,
                checks,
            },
        );
        self.name_index.insert(name.clone(), index);
        if let Some(old_name) = old_name.filter(|old| *old != name) {
            self.forget_if_empty(&old_name, index);
        }
        Ok(runners)
    }

    /// Removes an instance and stops its checks.
    ///
    /// # Errors
    /// [`UnknownService`] when no instance has that ID.
    pub(crate) fn deregister(&mut self, id: &str) -> Result<(), UnknownService> {
        let service = self
            .services
            .remove(id)
            .ok_or_else(|| UnknownService(id.to_owned()))?;
        for check in &service.checks {
            check.stop.cancel();
        }
        let index = self.next_index();
        self.catalog_index = index;
        self.forget_if_empty(&service.definition.name, index);
        Ok(())
    }

    fn check_mut(&mut self, run: RunRef<'_>) -> Option<&mut CheckState> {
        self.services
            .get_mut(run.service_id)?
            .checks
            .iter_mut()
            .find(|check| check.definition.id == run.check_id && check.run_id == run.run_id)
    }

    /// Sets a check's status and output; a new index when the status (or, for `bump_on_output`,
    /// the output) changed. `false` when nothing observable changed.
    fn set(
        &mut self,
        run: RunRef<'_>,
        status: Status,
        output: String,
        bump_on_output: bool,
        now: Instant,
    ) -> bool {
        let Some(check) = self.check_mut(run) else {
            return false;
        };
        let status_changed = check.status != status;
        let output_changed = check.output != output;
        check.output = output;
        if !(status_changed || bump_on_output && output_changed) {
            return false;
        }
        if status_changed {
            check.critical_since = (status == Status::Critical).then_some(now);
            tracing::info!(
                service_id = run.service_id,
                check_id = run.check_id,
                from = check.status.as_str(),
                to = status.as_str(),
                "check status changed"
            );
        }
        check.status = status;
        let Some(name) = self
            .services
            .get(run.service_id)
            .map(|service| service.definition.name.clone())
        else {
            return false;
        };
        let index = self.touch(&name);
        if let Some(service) = self.services.get_mut(run.service_id) {
            service.modify_index = index;
            if let Some(check) = service
                .checks
                .iter_mut()
                .find(|check| check.definition.id == run.check_id)
            {
                check.modify_index = index;
            }
        }
        true
    }

    /// Records the result of one probe of `run` (ignored when the run was replaced). Whether the
    /// index moved.
    pub(crate) fn record(
        &mut self,
        run: RunRef<'_>,
        status: Status,
        output: &str,
        now: Instant,
    ) -> bool {
        let limit = self
            .check_mut(run)
            .map_or(0, |check| check.definition.output_max_size);
        let output = truncate_output(output, limit);
        self.set(run, status, output, false, now)
    }

    /// A TTL report (`/v1/agent/check/{pass,warn,fail}`): sets the status and output (`note`) and
    /// restarts the TTL. Whether the index moved.
    ///
    /// # Errors
    /// [`TtlError`] for an unknown check or one that is not a TTL check.
    pub(crate) fn report_ttl(
        &mut self,
        check_id: &str,
        status: Status,
        note: &str,
        now: Instant,
    ) -> Result<bool, TtlError> {
        let found = self.services.values_mut().find_map(|service| {
            let service_id = service.definition.id.clone();
            service
                .checks
                .iter_mut()
                .find(|check| check.definition.id == check_id)
                .map(|check| (service_id, check))
        });
        let Some((service_id, check)) = found else {
            return Err(TtlError::UnknownCheck(check_id.to_owned()));
        };
        let Some(ttl) = ttl_of(&check.definition) else {
            return Err(TtlError::NotTtl(check_id.to_owned()));
        };
        check.ttl_deadline = Some(now + ttl);
        let output = truncate_output(note, check.definition.output_max_size);
        let run = RunRef {
            service_id: &service_id,
            check_id,
            run_id: check.run_id,
        };
        Ok(self.set(run, status, output, true, now))
    }

    /// When `run` of a TTL check expires next; `None` once the run was replaced.
    pub(crate) fn ttl_deadline(&self, run: RunRef<'_>) -> Option<Instant> {
        self.services
            .get(run.service_id)?
            .checks
            .iter()
            .find(|check| check.definition.id == run.check_id && check.run_id == run.run_id)?
            .ttl_deadline
    }

    /// Marks a TTL check critical if its deadline has passed (Consul's output: `TTL expired`, with
    /// the last report's note), and arms it again. Whether the index moved.
    pub(crate) fn expire_ttl(&mut self, run: RunRef<'_>, now: Instant) -> bool {
        let Some(check) = self.check_mut(run) else {
            return false;
        };
        let (Some(deadline), Some(ttl)) = (check.ttl_deadline, ttl_of(&check.definition)) else {
            return false;
        };
        if deadline > now {
            return false;
        }
        check.ttl_deadline = Some(now + ttl);
        if check.status == Status::Critical && check.output.starts_with("TTL expired") {
            return false;
        }
        let output = if check.output.is_empty() {
            "TTL expired".to_owned()
        } else {
            format!(
                "TTL expired (last output before timeout follows): {}",
                check.output
            )
        };
        self.set(run, Status::Critical, output, true, now)
    }

    /// Removes every instance with a check critical for longer than its
    /// `DeregisterCriticalServiceAfter`; returns their IDs and when the next one would be due.
    pub(crate) fn reap(&mut self, now: Instant) -> (Vec<String>, Option<Instant>) {
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for service in self.services.values() {
            let mut service_due = false;
            for check in &service.checks {
                let (Some(since), Some(after)) = (
                    check.critical_since,
                    check.definition.deregister_critical_after,
                ) else {
                    continue;
                };
                let at = since + after;
                if at <= now {
                    service_due = true;
                } else {
                    next = Some(next.map_or(at, |next| next.min(at)));
                }
            }
            if service_due {
                due.push(service.definition.id.clone());
            }
        }
        for id in &due {
            tracing::info!(
                service_id = %id,
                "removing an instance critical for longer than its DeregisterCriticalServiceAfter"
            );
            // Found just above, under the same lock.
            let _ = self.deregister(id);
        }
        if !due.is_empty() {
            // Times of the remaining checks are unchanged; recompute only if something was removed.
            next = self.reap_deadline();
        }
        (due, next)
    }

    fn reap_deadline(&self) -> Option<Instant> {
        self.services
            .values()
            .flat_map(|service| &service.checks)
            .filter_map(|check| {
                Some(check.critical_since? + check.definition.deregister_critical_after?)
            })
            .min()
    }

    /// Puts back instances read from the data directory. Their checks start critical (nothing is
    /// known about them until they run again), and their `DeregisterCriticalServiceAfter` counts
    /// from now.
    pub(crate) fn restore(
        &mut self,
        definitions: Vec<ServiceDefinition>,
        now: Instant,
        parent: &CancellationToken,
    ) -> Vec<Runner> {
        let mut runners = Vec::new();
        for mut definition in definitions {
            for check in &mut definition.checks {
                check.initial_status = None;
            }
            match self.register(definition, now, parent) {
                Ok(started) => runners.extend(started),
                Err(error) => tracing::warn!(%error, "skipping a stored instance"),
            }
        }
        for service in self.services.values_mut() {
            for check in &mut service.checks {
                check.output = "Restored from the data directory; not checked yet".to_owned();
            }
        }
        runners
    }

    /// The definitions to store, in ID order, with each check's registered `Status`.
    pub(crate) fn definitions(&self) -> Vec<ServiceDefinition> {
        self.services
            .values()
            .map(|service| service.definition.clone())
            .collect()
    }

    /// `GET /v1/health/service/{name}`: its index and entries, only those whose checks all pass
    /// when `passing`, only those with every tag in `tags`.
    pub(crate) fn health(
        &self,
        node: &Node,
        name: &str,
        passing: bool,
        tags: &[String],
    ) -> (u64, Vec<HealthEntry>) {
        let index = self
            .name_index
            .get(name)
            .copied()
            .unwrap_or(self.catalog_index);
        let entries = self
            .services
            .values()
            .filter(|service| service.definition.name == name)
            .filter(|service| tags.iter().all(|tag| service.definition.tags.contains(tag)))
            .filter(|service| {
                !passing
                    || service
                        .checks
                        .iter()
                        .all(|check| check.status == Status::Passing)
            })
            .map(|service| {
                let mut checks = vec![self.serf_check(node)];
                checks.extend(
                    service
                        .checks
                        .iter()
                        .map(|check| check_json(node, &service.definition, check)),
                );
                HealthEntry {
                    node: self.node_json(node),
                    service: ServiceJson {
                        id: service.definition.id.clone(),
                        service: service.definition.name.clone(),
                        tags: service.definition.tags.clone(),
                        address: service.definition.address.clone(),
                        meta: service.definition.meta.clone(),
                        port: service.definition.port,
                        weights: weights_json(&service.definition),
                        enable_tag_override: service.definition.enable_tag_override,
                        create_index: service.create_index,
                        modify_index: service.modify_index,
                    },
                    checks,
                }
            })
            .collect();
        (index, entries)
    }

    /// `GET /v1/agent/services`: instances by ID.
    pub(crate) fn agent_services(&self, node: &Node) -> BTreeMap<String, AgentServiceJson> {
        self.services
            .values()
            .map(|service| {
                let definition = &service.definition;
                (
                    definition.id.clone(),
                    AgentServiceJson {
                        id: definition.id.clone(),
                        service: definition.name.clone(),
                        tags: definition.tags.clone(),
                        meta: definition.meta.clone(),
                        port: definition.port,
                        address: definition.address.clone(),
                        weights: weights_json(definition),
                        enable_tag_override: definition.enable_tag_override,
                        datacenter: node.datacenter.clone(),
                    },
                )
            })
            .collect()
    }

    /// `GET /v1/agent/checks`: the instances' checks by check ID.
    pub(crate) fn agent_checks(&self, node: &Node) -> BTreeMap<String, CheckJson> {
        self.services
            .values()
            .flat_map(|service| {
                service.checks.iter().map(|check| {
                    (
                        check.definition.id.clone(),
                        check_json(node, &service.definition, check),
                    )
                })
            })
            .collect()
    }

    /// `GET /v1/catalog/services`: the catalog index, and each service name with the union of its
    /// instances' tags (sorted, without repeats).
    pub(crate) fn catalog_services(&self) -> (u64, BTreeMap<String, Vec<String>>) {
        let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for service in self.services.values() {
            let tags = names.entry(service.definition.name.clone()).or_default();
            tags.extend(service.definition.tags.iter().cloned());
        }
        for tags in names.values_mut() {
            tags.sort();
            tags.dedup();
        }
        (self.catalog_index, names)
    }

    fn node_json(&self, node: &Node) -> NodeJson {
        NodeJson {
            id: node.id.clone(),
            node: node.name.clone(),
            address: node.address.clone(),
            datacenter: node.datacenter.clone(),
            tagged_addresses: BTreeMap::from([
                ("lan".to_owned(), node.address.clone()),
                ("wan".to_owned(), node.address.clone()),
            ]),
            meta: BTreeMap::new(),
            create_index: self.node_index,
            modify_index: self.node_index,
        }
    }

    fn serf_check(&self, node: &Node) -> CheckJson {
        CheckJson {
            node: node.name.clone(),
            check_id: SERF_CHECK_ID.to_owned(),
            name: "Serf Health Status".to_owned(),
            status: Status::Passing.as_str(),
            notes: String::new(),
            output: "Agent alive and reachable".to_owned(),
            service_id: String::new(),
            service_name: String::new(),
            service_tags: Vec::new(),
            check_type: "",
            interval: String::new(),
            timeout: String::new(),
            exposed_port: 0,
            definition: DefinitionJson::default(),
            create_index: self.node_index,
            modify_index: self.node_index,
        }
    }
}

fn ttl_of(check: &CheckDefinition) -> Option<Duration> {
    match check.kind {
        CheckKind::Ttl { ttl } => Some(ttl),
        _ => None,
    }
}

/// A duration as Go prints it, or `""` when unset or zero (Consul's `HealthCheck` fields).
fn shown_if_set(value: Option<Duration>) -> String {
    value
        .filter(|duration| !duration.is_zero())
        .map(duration::format)
        .unwrap_or_default()
}

fn weights_json(definition: &ServiceDefinition) -> WeightsJson {
    WeightsJson {
        passing: definition.weights.passing,
        warning: definition.weights.warning,
    }
}

fn check_json(node: &Node, service: &ServiceDefinition, check: &CheckState) -> CheckJson {
    let definition = &check.definition;
    let format_option = |value: Option<Duration>| duration::format(value.unwrap_or_default());
    let mut shown = DefinitionJson {
        interval: duration::format(definition.interval),
        timeout: format_option(definition.timeout),
        ttl: format_option(ttl_of(definition)),
        deregister_critical_service_after: format_option(definition.deregister_critical_after),
        ..DefinitionJson::default()
    };
    match &definition.kind {
        CheckKind::Grpc {
            target,
            use_tls,
            tls_skip_verify,
        } => {
            shown.grpc = target.clone();
            shown.grpc_use_tls = *use_tls;
            shown.tls_skip_verify = *tls_skip_verify;
        }
        CheckKind::Http {
            url,
            method,
            header,
            body,
            tls_skip_verify,
            ..
        } => {
            shown.http = url.clone();
            shown.method = method.clone();
            shown.header = (!header.is_empty()).then(|| header.clone());
            shown.body = body.clone();
            shown.tls_skip_verify = *tls_skip_verify;
        }
        CheckKind::Tcp { address } => shown.tcp = address.clone(),
        CheckKind::Ttl { .. } => {}
    }
    CheckJson {
        node: node.name.clone(),
        check_id: definition.id.clone(),
        name: definition.name.clone(),
        status: check.status.as_str(),
        notes: definition.notes.clone(),
        output: check.output.clone(),
        service_id: service.id.clone(),
        service_name: service.name.clone(),
        service_tags: service.tags.clone(),
        check_type: definition.kind.type_name(),
        // Consul leaves these empty when unset (a TTL check has no interval).
        interval: shown_if_set(Some(definition.interval)),
        timeout: shown_if_set(definition.timeout),
        exposed_port: 0,
        definition: shown,
        create_index: check.create_index,
        modify_index: check.modify_index,
    }
}

#[cfg(test)]
mod tests;
