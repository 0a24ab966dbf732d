//! The channels to etcd's members and the calls the backend makes on them.
//!
//! Each member gets one lazy channel (one HTTP/2 connection; pings every 10 s while a stream is
//! open find a dead connection under a watch). A call tries the member that answered last, and the
//! next ones while a member is unreachable; a caller that finds a member failing in its own way (a
//! renewal unanswered, a stream broken) moves the preference off it with [`Client::avoid`], so the
//! next attempt goes straight to another member. tonic's `balance_channel` is not used because it
//! keeps picking endpoints that went away (tonic issues #643, #2182).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flotilla_proto::etcd::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    RangeResponse, kv_client::KvClient, lease_client::LeaseClient,
};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::keeper::Lease;
use crate::discovery::DiscoveryError;

/// How long one unary call (or opening a watch) may take on one member before the next is tried.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to one member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings while a stream is open, so a watch on a silently dead connection ends. etcd refuses
/// pings more often than every 5 s (`--grpc-keepalive-min-time`).
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// The channels to etcd's members, and which one to try first. Clones share both.
#[derive(Debug, Clone)]
pub(super) struct Client {
    members: Arc<[Member]>,
    preferred: Arc<AtomicUsize>,
}

/// One member: its URL and its channel.
#[derive(Debug)]
pub(super) struct Member {
    pub(super) url: String,
    endpoint: Endpoint,
    /// Made on first use, inside the runtime (tonic spawns the channel's worker).
    channel: OnceLock<Channel>,
}

impl Member {
    pub(super) fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone()
    }
}

impl Client {
    /// Channels to `urls`, none connected yet.
    pub(super) fn new(urls: &[String]) -> Result<Self, DiscoveryError> {
        let members = urls
            .iter()
            .map(|url| {
                let endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|error| DiscoveryError::Unreachable {
                        endpoint: url.clone(),
                        reason: error.to_string(),
                    })?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(PING_INTERVAL)
                    .keep_alive_timeout(PING_TIMEOUT)
                    // etcd closes connections that ping without an open stream.
                    .keep_alive_while_idle(false)
                    .tcp_nodelay(true);
                Ok(Member {
                    url: url.clone(),
                    endpoint,
                    channel: OnceLock::new(),
                })
            })
            .collect::<Result<Vec<_>, DiscoveryError>>()?;
        if members.is_empty() {
            return Err(DiscoveryError::Unreachable {
                endpoint: "(none)".into(),
                reason: "no etcd endpoint is configured".into(),
            });
        }
        Ok(Self {
            members: members.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// How many members there are (at least one).
    pub(super) fn len(&self) -> usize {
        self.members.len()
    }

    /// The member to try first.
    pub(super) fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed) % self.members.len()
    }

    /// Member `index` (taken modulo the number of members).
    pub(super) fn member(&self, index: usize) -> &Member {
        &self.members[index % self.members.len()]
    }

    /// Moves the preference from member `index`, which just failed, to the next one, unless another
    /// caller has already moved it (so two failures on one member do not skip a healthy one).
    pub(super) fn avoid(&self, index: usize) {
        let count = self.members.len();
        let index = index % count;
        let _ = self.preferred.compare_exchange(
            index,
            (index + 1) % count,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Runs `call` on the preferred member, and on the next ones while a member is unreachable;
    /// the member that answered is preferred from then on.
    pub(super) async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, DiscoveryError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_indexed(what, call)
            .await
            .map(|(answer, _member)| answer)
    }

    /// [`Client::call`], also naming the member that answered.
    pub(super) async fn call_indexed<T, F, Fut>(
        &self,
        what: &str,
        mut call: F,
    ) -> Result<(T, usize), DiscoveryError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let count = self.members.len();
        let first = self.preferred();
        let mut unreachable = None;
        for offset in 0..count {
            let index = (first + offset) % count;
            let member = &self.members[index];
            let status = match tokio::time::timeout(CALL_TIMEOUT, call(member.channel())).await {
                Ok(Ok(answer)) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok((answer, index));
                }
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!(
                    "no answer within {}s",
                    CALL_TIMEOUT.as_secs()
                )),
            };
            if !is_unreachable(&status) {
                return Err(refused(what, &status));
            }
            if count > 1 {
                tracing::debug!(endpoint = %member.url, %what, error = %status.message(), "etcd member unreachable; trying the next");
            }
            unreachable = Some(DiscoveryError::Unreachable {
                endpoint: member.url.clone(),
                reason: format!("{what}: {}", status.message()),
            });
        }
        Err(unreachable.unwrap_or_else(|| DiscoveryError::Unreachable {
            endpoint: "(none)".into(),
            reason: "no etcd endpoint is configured".into(),
        }))
    }

    pub(super) async fn range(
        &self,
        what: &str,
        request: RangeRequest,
    ) -> Result<RangeResponse, DiscoveryError> {
        self.call(what, |channel| {
            let request = request.clone();
            async move { Ok(KvClient::new(channel).range(request).await?.into_inner()) }
        })
        .await
    }

    pub(super) async fn delete(&self, what: &str, key: Vec<u8>) -> Result<(), DiscoveryError> {
        self.call(what, |channel| {
            let request = DeleteRangeRequest {
                key: key.clone(),
                ..DeleteRangeRequest::default()
            };
            async move {
                KvClient::new(channel).delete_range(request).await?;
                Ok(())
            }
        })
        .await
    }

    /// Grants a lease of `ttl` seconds (etcd may raise it to its minimum).
    pub(super) async fn grant(&self, what: &str, ttl: i64) -> Result<Lease, DiscoveryError> {
        let granted = self
            .call(what, |channel| async move {
                Ok(LeaseClient::new(channel)
                    .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                    .await?
                    .into_inner())
            })
            .await?;
        if !granted.error.is_empty() {
            return Err(DiscoveryError::Refused {
                what: what.to_owned(),
                status: 500,
                message: granted.error,
            });
        }
        Ok(Lease {
            id: granted.id,
            ttl: granted.ttl,
        })
    }

    /// Puts `key` attached to `lease`; etcd refuses it once the lease is revoked or ran out.
    pub(super) async fn put(
        &self,
        what: &str,
        key: &str,
        value: &[u8],
        lease: Lease,
    ) -> Result<(), DiscoveryError> {
        self.call(what, |channel| {
            let request = PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.to_vec(),
                lease: lease.id,
                ..PutRequest::default()
            };
            async move {
                KvClient::new(channel).put(request).await?;
                Ok(())
            }
        })
        .await
    }

    /// Revokes `lease`, deleting every key attached to it; one etcd no longer knows is already
    /// gone.
    pub(super) async fn revoke(&self, lease: Lease) -> Result<(), DiscoveryError> {
        let revoked = self
            .call("revoking a lease", |channel| async move {
                LeaseClient::new(channel)
                    .lease_revoke(LeaseRevokeRequest { id: lease.id })
                    .await?;
                Ok(())
            })
            .await;
        match revoked {
            Err(DiscoveryError::Refused { status: 404, .. }) => Ok(()),
            other => other,
        }
    }
}

/// `message` with the metadata etcd's `clientv3.WithRequireLeader` sends (`hasleader: true`), for
/// the streams (Watch, LeaseKeepAlive): a member cut off from its cluster's leader then ends the
/// stream with "etcdserver: no leader" instead of keeping it open and silent, and the caller moves
/// to another member.
pub(super) fn require_leader<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("hasleader", MetadataValue::from_static("true"));
    request
}

/// Whether `status` means "this member cannot serve now" (try another, or later) rather than a
/// refusal.
pub(super) fn is_unreachable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

/// A refusal, with the HTTP status Google's API design maps the gRPC code to (`google/rpc/code.proto`),
/// since [`DiscoveryError::Refused`] carries an HTTP status.
pub(super) fn refused(what: &str, status: &Status) -> DiscoveryError {
    let http = match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => 500,
    };
    DiscoveryError::Refused {
        what: what.to_owned(),
        status: http,
        message: format!("gRPC {:?}: {}", status.code(), status.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(members: usize) -> Result<Client, DiscoveryError> {
        let urls: Vec<String> = (1..=members)
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect();
        Client::new(&urls)
    }

    #[test]
    fn a_failed_member_hands_the_preference_to_the_next_once() -> Result<(), DiscoveryError> {
        let client = client(3)?;
        assert_eq!(client.preferred(), 0);
        client.avoid(0);
        assert_eq!(client.preferred(), 1);
        // A second report of the same failure (another stream on member 0) keeps member 1.
        client.avoid(0);
        assert_eq!(client.preferred(), 1);
        client.avoid(1);
        client.avoid(2);
        assert_eq!(client.preferred(), 0, "the preference wraps around");
        let single = self::client(1)?;
        single.avoid(0);
        assert_eq!(single.preferred(), 0);
        Ok(())
    }

    #[test]
    fn streams_require_a_leader() {
        let request = require_leader(());
        assert_eq!(
            request
                .metadata()
                .get("hasleader")
                .and_then(|value| value.to_str().ok()),
            Some("true")
        );
    }

    #[test]
    fn no_endpoint_is_an_error() {
        assert!(Client::new(&[]).is_err());
    }

    #[test]
    fn grpc_codes_map_to_unreachable_or_refused() {
        assert!(is_unreachable(&Status::unavailable("down")));
        assert!(!is_unreachable(&Status::not_found("lease")));
        assert!(matches!(
            refused("x", &Status::not_found("requested lease not found")),
            DiscoveryError::Refused { status: 404, .. }
        ));
    }
}
