//! Watching one service: list its prefix (`Range`, which also gives the revision), then watch it
//! from the next revision, applying each event to the set.
//!
//! How each failure is met:
//!
//! - a compacted revision: the events missed are gone, so the prefix is listed again at once;
//! - a broken stream (an error, including etcd's "no leader" for a member cut off from its
//!   leader, since the stream asks for one with `hasleader`, or the stream's end): the member
//!   loses the preference and, when there is another, it lists and watches at once; repeated
//!   breaks back off;
//! - a list or watch that failed on every member, or a watch etcd cancelled: back off, with full
//!   jitter, up to [`WATCH_MAX_BACKOFF`].
//!
//! The last set is kept meanwhile: callers go on with the instances they knew.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_proto::etcd::etcdserverpb::{
    RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use flotilla_proto::etcd::mvccpb::{self, event::EventType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::client::{Client, require_leader};
use super::{InstanceValue, WATCH_MAX_BACKOFF, prefix_end, service_prefix};
use crate::discovery::backoff::backoff_up_to;
use crate::discovery::{DiscoveryError, Instance};

/// A watch stream that lived this long was healthy: its end starts the back-off afresh.
const HEALTHY_STREAM: Duration = Duration::from_secs(60);

/// One watch of one service.
pub(super) struct WatchState {
    client: Client,
    service: String,
    prefix: Vec<u8>,
    /// The current instances by key.
    instances: BTreeMap<Vec<u8>, Instance>,
    last: Option<Vec<Instance>>,
    stream: Option<WatchStream>,
    failures: u32,
}

/// An open watch stream. The request half is kept open for as long as the watch is read.
struct WatchStream {
    _sender: mpsc::Sender<WatchRequest>,
    events: Streaming<WatchResponse>,
    opened_at: tokio::time::Instant,
    /// The member it is open on.
    member: usize,
}

/// Why the watch has to start over.
#[derive(Debug)]
enum Failure {
    /// etcd compacted the revision the watch was at.
    Compacted(String),
    /// The stream broke: its member failed.
    Broken(String),
    /// Listing or watching failed on every member, or etcd cancelled the watch.
    Failed(String),
}

impl WatchState {
    /// A watch of `service`, not started yet.
    pub(super) fn new(client: Client, service: &str) -> Self {
        Self {
            client,
            service: service.to_owned(),
            prefix: service_prefix(service),
            instances: BTreeMap::new(),
            last: None,
            stream: None,
            failures: 0,
        }
    }

    /// Blocks until the set of instances differs from the last one yielded.
    pub(super) async fn next_change(&mut self) -> Vec<Instance> {
        loop {
            let outcome = match self.stream.as_mut() {
                None => self.resync().await.map_err(Failure::Failed),
                Some(stream) => match stream.events.message().await {
                    Ok(Some(answer)) => self.apply(answer),
                    Ok(None) => Err(Failure::Broken("etcd ended the watch stream".to_owned())),
                    Err(status) => Err(Failure::Broken(status.to_string())),
                },
            };
            let reason = match outcome {
                Ok(()) => {
                    let current: Vec<Instance> = self.instances.values().cloned().collect();
                    if self.last.as_ref() != Some(&current) {
                        self.last = Some(current.clone());
                        return current;
                    }
                    continue;
                }
                Err(Failure::Compacted(reason)) => {
                    // Nothing is wrong with etcd: waiting would only keep the set stale longer.
                    tracing::info!(service = %self.service, %reason, "etcd compacted the watched revision; listing again");
                    self.stream = None;
                    continue;
                }
                Err(Failure::Broken(reason)) => {
                    let broken = self.stream.take();
                    let healthy = broken
                        .as_ref()
                        .is_some_and(|stream| stream.opened_at.elapsed() >= HEALTHY_STREAM);
                    if let Some(stream) = &broken {
                        self.client.avoid(stream.member);
                    }
                    self.failures = if healthy {
                        1
                    } else {
                        self.failures.saturating_add(1)
                    };
                    if self.failures == 1 && self.client.len() > 1 {
                        tracing::warn!(service = %self.service, %reason, "the etcd watch broke; watching through the next member");
                        continue;
                    }
                    reason
                }
                Err(Failure::Failed(reason)) => {
                    self.stream = None;
                    self.failures = self.failures.saturating_add(1);
                    reason
                }
            };
            let wait = backoff_up_to(self.failures, WATCH_MAX_BACKOFF);
            tracing::warn!(service = %self.service, %reason, retry_in_ms = wait.as_millis() as u64, "watching etcd failed; keeping the last known instances");
            tokio::time::sleep(wait).await;
        }
    }

    /// Lists the prefix and watches it from the next revision.
    async fn resync(&mut self) -> Result<(), String> {
        let listed = self
            .client
            .range(
                &format!("listing {}", self.service),
                RangeRequest {
                    key: self.prefix.clone(),
                    range_end: prefix_end(&self.prefix),
                    ..RangeRequest::default()
                },
            )
            .await
            .map_err(|error| error.to_string())?;
        let revision = listed
            .header
            .map(|header| header.revision)
            .ok_or("etcd's answer to a Range had no header")?;
        let stream = open(&self.client, &self.service, &self.prefix, revision + 1)
            .await
            .map_err(|error| error.to_string())?;
        self.instances = listed
            .kvs
            .into_iter()
            .filter_map(|kv| {
                let instance = decode(&self.service, &kv)?;
                Some((kv.key, instance))
            })
            .collect();
        self.stream = Some(stream);
        Ok(())
    }

    /// Applies one watch answer; a failure for a cancelled watch (compaction included).
    fn apply(&mut self, answer: WatchResponse) -> Result<(), Failure> {
        if answer.compact_revision != 0 {
            return Err(Failure::Compacted(format!(
                "compacted at {}: {}",
                answer.compact_revision, answer.cancel_reason
            )));
        }
        if answer.canceled {
            return Err(Failure::Failed(format!(
                "etcd cancelled the watch: {}",
                answer.cancel_reason
            )));
        }
        if !answer.events.is_empty() {
            self.failures = 0;
        }
        for event in answer.events {
            let Some(kv) = event.kv else { continue };
            match EventType::try_from(event.r#type) {
                Ok(EventType::Put) => match decode(&self.service, &kv) {
                    Some(instance) => {
                        self.instances.insert(kv.key, instance);
                    }
                    None => {
                        self.instances.remove(&kv.key);
                    }
                },
                Ok(EventType::Delete) => {
                    self.instances.remove(&kv.key);
                }
                Err(_) => {
                    tracing::warn!(service = %self.service, r#type = event.r#type, "unknown etcd event type; ignored");
                }
            }
        }
        Ok(())
    }
}

/// Opens a watch of `prefix` from `revision` and waits for etcd to confirm it.
async fn open(
    client: &Client,
    service: &str,
    prefix: &[u8],
    revision: i64,
) -> Result<WatchStream, DiscoveryError> {
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            start_revision: revision,
            ..WatchCreateRequest::default()
        })),
    };
    let what = format!("watching {service}");
    let ((sender, events, created), member) = client
        .call_indexed(&what, |channel| {
            let create = create.clone();
            async move {
                let (sender, receiver) = mpsc::channel(1);
                sender
                    .send(create)
                    .await
                    .map_err(|_| Status::internal("the watch queue closed"))?;
                let mut events = WatchClient::new(channel)
                    .watch(require_leader(ReceiverStream::new(receiver)))
                    .await?
                    .into_inner();
                let created = events
                    .message()
                    .await?
                    .ok_or_else(|| Status::unavailable("etcd ended the watch stream"))?;
                Ok((sender, events, created))
            }
        })
        .await?;
    if !created.created || created.canceled {
        return Err(DiscoveryError::Malformed {
            what,
            reason: format!(
                "the watch was not created (compacted at {}: {})",
                created.compact_revision, created.cancel_reason
            ),
        });
    }
    Ok(WatchStream {
        _sender: sender,
        events,
        opened_at: tokio::time::Instant::now(),
        member,
    })
}

/// The instance a key-value describes, or `None` (with a warning) when its value does not parse.
pub(super) fn decode(service: &str, kv: &mvccpb::KeyValue) -> Option<Instance> {
    let parsed = serde_json::from_slice::<InstanceValue>(&kv.value)
        .map_err(|error| error.to_string())
        .and_then(|value| {
            let address = value.address.clone();
            value
                .into_instance()
                .ok_or_else(|| format!("address {address:?} is not an IP address"))
        });
    match parsed {
        Ok(instance) => Some(instance),
        Err(reason) => {
            tracing::warn!(service, key = %String::from_utf8_lossy(&kv.key), %reason, "skipping an instance whose value does not parse");
            None
        }
    }
}
