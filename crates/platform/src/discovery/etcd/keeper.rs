//! Keeping a registration's lease alive, against its deadline.
//!
//! A lease runs out a TTL after etcd last renewed it, so what matters is that one renewal lands
//! within every TTL, through whichever member. The keeper sends a renewal every third of the TTL
//! on a `LeaseKeepAlive` stream and waits a sixth of it (at least 500 ms) for the answer. A member
//! that does not answer in time, whether it crashed, hung or was cut off from its leader (the
//! stream asks for one, `hasleader`), loses the preference, and the next member is asked at once.
//! Only when every member failed does the keeper back off, and while the lease may still be alive
//! it never waits past the lease's expiry less one answer's patience.
//!
//! Waiting for the 5 s call timeout, backing off, and asking the same member again would not do:
//! with the default 15 s TTL, a member that dies silently just after a renewal would be given up
//! at 10 s and asked again, and the next member only tried after the lease ran out, removing every
//! instance renewed through that member at once.
//!
//! When etcd answers that the lease is gone (a TTL of 0: it ran out during a gap longer than the
//! TTL, someone revoked it, or etcd lost its data), the keeper grants a new lease, records it, and
//! only then puts the key with it. The recorded lease is what a stopped keeper hands back, and
//! revoking it makes a put still on its way fail (etcd refuses a put on an unknown lease) or
//! deletes what the put wrote: a keeper stopped mid-put leaves no key behind.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use flotilla_proto::etcd::etcdserverpb::{LeaseKeepAliveRequest, lease_client::LeaseClient};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::client::{Client, require_leader};
use crate::discovery::backoff::{MAX_BACKOFF, MIN_BACKOFF, backoff_up_to};

/// The shortest wait for a renewal's answer: a round trip to a busy member, with room to spare.
const ANSWER_PATIENCE_FLOOR: Duration = Duration::from_millis(500);
/// The shortest wait between rounds in which every member failed, so members that refuse at once
/// are not hammered as the lease's expiry nears.
const RETRY_FLOOR: Duration = Duration::from_millis(100);

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lease {
    pub(super) id: i64,
    /// The time-to-live etcd chose, in seconds.
    pub(super) ttl: i64,
}

impl Lease {
    pub(super) fn time_to_live(self) -> Duration {
        Duration::from_secs(u64::try_from(self.ttl).unwrap_or(1).max(1))
    }

    /// How often a renewal is sent: three chances before the lease runs out.
    pub(super) fn renew_every(self) -> Duration {
        self.time_to_live() / 3
    }

    /// How long a renewal's answer is awaited before another member is asked: half the time
    /// between renewals, so a failover still lands well within the TTL.
    pub(super) fn answer_patience(self) -> Duration {
        (self.time_to_live() / 6).max(ANSWER_PATIENCE_FLOOR)
    }

    /// The longest wait between retries: renewals must land within the TTL.
    pub(super) fn retry_ceiling(self) -> Duration {
        self.renew_every().clamp(MIN_BACKOFF, MAX_BACKOFF)
    }
}

/// What a keeper puts again when its lease is lost.
#[derive(Debug)]
pub(super) struct Registered {
    /// What the calls are about, for errors ("registering product-1").
    pub(super) what: String,
    pub(super) key: String,
    pub(super) value: Vec<u8>,
    /// The TTL to ask for, in seconds.
    pub(super) ttl: i64,
}

/// The keepers of one registry (and its clones), by instance id; dropping it stops them all.
#[derive(Debug)]
pub(super) struct Keepers {
    root: CancellationToken,
    /// Locked for the whole of a registration change, so changes to one id never interleave.
    pub(super) running: tokio::sync::Mutex<HashMap<String, Keeper>>,
}

impl Keepers {
    pub(super) fn new() -> Self {
        Self {
            root: CancellationToken::new(),
            running: tokio::sync::Mutex::new(HashMap::new()),
        }
    }
}

impl Drop for Keepers {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

/// The task keeping one registration alive.
#[derive(Debug)]
pub(super) struct Keeper {
    /// The key it keeps.
    pub(super) key: String,
    stop: CancellationToken,
    /// Ends with the lease it held last when stopped.
    task: JoinHandle<Lease>,
}

impl Keeper {
    /// Starts keeping `lease`, granted at `granted_at` (the moment its grant was sent), alive for
    /// `registered`, until stopped or `keepers` is dropped. The key need not be put yet.
    pub(super) fn spawn(
        keepers: &Keepers,
        client: Client,
        registered: Registered,
        lease: Lease,
        granted_at: Instant,
    ) -> Self {
        let stop = keepers.root.child_token();
        let key = registered.key.clone();
        let task = tokio::spawn(keep(
            client,
            registered,
            lease,
            granted_at + lease.time_to_live(),
            stop.clone(),
        ));
        Self { key, stop, task }
    }

    /// Stops the task and returns the lease it held last, granted even if its key was not put yet
    /// (`None` if the task died, which only a panic does).
    pub(super) async fn stop(self) -> Option<Lease> {
        self.stop.cancel();
        self.task.await.ok()
    }
}

/// Keeps `lease` alive until `stop`, registering again whenever it is lost; returns the lease held
/// at the end.
async fn keep(
    client: Client,
    registered: Registered,
    mut lease: Lease,
    mut expires_at: Instant,
    stop: CancellationToken,
) -> Lease {
    let _: Option<Infallible> = stop
        .run_until_cancelled(keep_forever(
            &client,
            &registered,
            &mut lease,
            &mut expires_at,
        ))
        .await;
    lease
}

async fn keep_forever(
    client: &Client,
    registered: &Registered,
    lease: &mut Lease,
    expires_at: &mut Instant,
) -> Infallible {
    // Members that failed since the last renewal, and rounds in which every member failed.
    let mut failed_members = 0_usize;
    let mut failed_rounds = 0_u32;
    loop {
        let member = client.preferred();
        let renewed_until = *expires_at;
        let end = renew(client, member, *lease, expires_at).await;
        if *expires_at > renewed_until {
            failed_members = 0;
            failed_rounds = 0;
        }
        match end {
            Renewal::Lost => {
                tracing::warn!(key = %registered.key, lease = lease.id, "the lease ran out; registering again");
                register_again(client, registered, lease, expires_at).await;
                failed_members = 0;
                failed_rounds = 0;
            }
            Renewal::Broken(reason) => {
                let endpoint = &client.member(member).url;
                client.avoid(member);
                failed_members += 1;
                if failed_members < client.len() {
                    tracing::warn!(key = %registered.key, lease = lease.id, %endpoint, %reason, "renewing the lease failed; asking the next etcd member");
                    continue;
                }
                failed_members = 0;
                failed_rounds = failed_rounds.saturating_add(1);
                let wait = retry_wait(*lease, failed_rounds, *expires_at, Instant::now());
                tracing::warn!(key = %registered.key, lease = lease.id, %endpoint, %reason, retry_in_ms = wait.as_millis() as u64, "renewing the lease failed on every etcd member");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// How long to wait once every member failed to renew: the back-off, but while the lease may still
/// be alive never past its expiry less one answer's patience, so one more round can land in time.
fn retry_wait(lease: Lease, failed_rounds: u32, expires_at: Instant, now: Instant) -> Duration {
    let wait = backoff_up_to(failed_rounds, lease.retry_ceiling());
    if now >= expires_at {
        // Gone by now, or about to be: the next answer will say, and a new lease follows.
        return wait;
    }
    let last_round = expires_at
        .checked_sub(lease.answer_patience())
        .unwrap_or(now);
    wait.min(last_round.saturating_duration_since(now))
        .max(RETRY_FLOOR)
}

/// Why renewing on one member stopped.
#[derive(Debug)]
enum Renewal {
    /// etcd no longer knows the lease: its key is gone.
    Lost,
    /// The member failed (no answer in time, an error, the stream ended); the lease may be alive.
    Broken(String),
}

/// Renews `lease` on member `index` every third of its TTL, moving `expires_at` on with every
/// answer, until etcd says the lease is gone or the member fails to answer within the patience.
async fn renew(client: &Client, index: usize, lease: Lease, expires_at: &mut Instant) -> Renewal {
    let request = LeaseKeepAliveRequest { id: lease.id };
    let patience = lease.answer_patience();
    let (sender, receiver) = mpsc::channel(1);
    // Queued before the call: etcd sends the response headers with its first answer.
    if sender.try_send(request).is_err() {
        return Renewal::Broken("the keep-alive queue closed".into());
    }
    let mut sent_at = Instant::now();
    let opened = tokio::time::timeout_at(
        sent_at + patience,
        LeaseClient::new(client.member(index).channel())
            .lease_keep_alive(require_leader(ReceiverStream::new(receiver))),
    )
    .await;
    let mut answers = match opened {
        Err(_) => return Renewal::Broken(format!("no answer within {patience:?}")),
        Ok(Err(status)) => return Renewal::Broken(status.to_string()),
        Ok(Ok(response)) => response.into_inner(),
    };
    loop {
        match tokio::time::timeout_at(sent_at + patience, answers.message()).await {
            Err(_) => {
                return Renewal::Broken(format!("no answer to a renewal within {patience:?}"));
            }
            Ok(Err(status)) => return Renewal::Broken(status.to_string()),
            Ok(Ok(None)) => return Renewal::Broken("etcd ended the stream".into()),
            Ok(Ok(Some(answer))) if answer.ttl <= 0 => return Renewal::Lost,
            Ok(Ok(Some(answer))) => {
                // Counted from the moment the renewal was sent: etcd renewed it no earlier.
                let ttl = Lease {
                    id: lease.id,
                    ttl: answer.ttl,
                }
                .time_to_live();
                *expires_at = sent_at + ttl;
            }
        }
        tokio::time::sleep_until(sent_at + lease.renew_every()).await;
        sent_at = Instant::now();
        if sender.send(request).await.is_err() {
            return Renewal::Broken("the stream closed".into());
        }
    }
}

/// Grants a new lease and puts the key with it, until both succeed. The lease is recorded in
/// `lease` as soon as it is granted, before the put (see the module's documentation).
async fn register_again(
    client: &Client,
    registered: &Registered,
    lease: &mut Lease,
    expires_at: &mut Instant,
) {
    let mut failures = 0_u32;
    loop {
        let granted_at = Instant::now();
        let error = match client.grant(&registered.what, registered.ttl).await {
            Ok(granted) => {
                *lease = granted;
                *expires_at = granted_at + granted.time_to_live();
                match client
                    .put(
                        &registered.what,
                        &registered.key,
                        &registered.value,
                        granted,
                    )
                    .await
                {
                    Ok(()) => return,
                    Err(error) => {
                        // Best effort: a lease that holds no key runs out by itself.
                        let _ = client.revoke(granted).await;
                        error
                    }
                }
            }
            Err(error) => error,
        };
        failures = failures.saturating_add(1);
        let wait = backoff_up_to(failures, lease.retry_ceiling());
        tracing::warn!(key = %registered.key, %error, retry_in_ms = wait.as_millis() as u64, "registering again failed");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_come_every_third_of_the_ttl_and_are_awaited_half_as_long() {
        let short = Lease { id: 1, ttl: 3 };
        assert_eq!(short.renew_every(), Duration::from_secs(1));
        assert_eq!(short.answer_patience(), Duration::from_millis(500));
        assert_eq!(short.retry_ceiling(), MIN_BACKOFF);
        // Consul's usual check: 10 s interval + 5 s timeout.
        let default = Lease { id: 1, ttl: 15 };
        assert_eq!(default.renew_every(), Duration::from_secs(5));
        assert_eq!(default.answer_patience(), Duration::from_millis(2500));
        // A silent member answers nothing after the last renewal at 0: the next is sent at 5 s and
        // given up at 7.5 s, when the next member is asked, long before the lease ends at 15 s.
        assert!(
            default.renew_every() + default.answer_patience() * 2 < default.time_to_live(),
            "two members can fail in turn before the lease runs out"
        );
        // etcd's answers never hold a TTL below 1 s; a broken one is not a zero wait.
        assert_eq!(
            Lease { id: 1, ttl: 0 }.time_to_live(),
            Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_never_wait_past_the_last_chance_before_the_lease_runs_out() {
        let lease = Lease { id: 1, ttl: 15 };
        let now = Instant::now();
        for failed_rounds in 1..12 {
            // Plenty of time left: the back-off as it is (within the renewal interval).
            let wait = retry_wait(lease, failed_rounds, now + Duration::from_secs(15), now);
            assert!(wait <= lease.retry_ceiling(), "{failed_rounds}: {wait:?}");
            // 2 s left: no wait beyond 2 s less one answer's patience (2.5 s), so at once.
            let wait = retry_wait(lease, failed_rounds, now + Duration::from_secs(2), now);
            assert_eq!(wait, RETRY_FLOOR, "{failed_rounds}");
            // 4 s left: at most 1.5 s.
            let wait = retry_wait(lease, failed_rounds, now + Duration::from_secs(4), now);
            assert!(
                wait <= Duration::from_millis(1500) && wait >= RETRY_FLOOR,
                "{failed_rounds}: {wait:?}"
            );
            // Run out: the back-off again, not a busy loop.
            let wait = retry_wait(lease, failed_rounds, now, now + Duration::from_secs(1));
            assert!(wait >= MIN_BACKOFF / 2, "{failed_rounds}: {wait:?}");
        }
    }
}
