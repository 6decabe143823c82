//! Leader election on a `coordination.k8s.io/v1` Lease, after client-go's
//! `leaderelection`: only the replica holding the Lease runs the operator's loops.
//!
//! Safety rests on three rules:
//! - every write is a `replace` carrying the resourceVersion we read, so of two
//!   candidates writing the same record one gets 409 Conflict and does not lead;
//! - a foreign holder's lease is judged expired by OUR clock, counted from when we last
//!   saw the record change, never from the timestamps in it (clocks differ between nodes);
//! - the leader steps down when it could not renew for `renew_deadline`, which is shorter
//!   than `lease_duration`, so it stops before anyone else may take over.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Where and how to hold the leader lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease, shared by all replicas.
    pub name: String,
    /// This replica's identity, unique among replicas (the pod name, typically).
    pub identity: String,
    /// How long others wait, after the last renewal they saw, before taking over.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// Time between two attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// A configuration with client-go's defaults: lease 15 s, renew deadline 10 s, retry 2 s.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks the relations between durations that the election's safety relies on.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let invalid = |reason: String| {
            Err(LeaderError::InvalidConfig {
                lease: format!("{}/{}", self.namespace, self.name),
                reason,
            })
        };
        if self.namespace.is_empty() || self.name.is_empty() {
            return invalid("the lease namespace and name must not be empty".into());
        }
        if self.identity.is_empty() {
            return invalid("the identity must not be empty".into());
        }
        if self.retry_period.is_zero() {
            return invalid("retry_period must be more than 0".into());
        }
        if self.lease_duration < Duration::from_secs(1) {
            return invalid(format!(
                "lease_duration {:?} must be at least 1s (the Lease counts whole seconds)",
                self.lease_duration
            ));
        }
        if self.renew_deadline >= self.lease_duration {
            return invalid(format!(
                "renew_deadline {:?} must be shorter than lease_duration {:?}",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period.mul_f64(JITTER_FACTOR) >= self.renew_deadline {
            return invalid(format!(
                "renew_deadline {:?} must be longer than {JITTER_FACTOR} x retry_period {:?}",
                self.renew_deadline, self.retry_period
            ));
        }
        Ok(())
    }

    /// The lease duration as the Lease stores it: whole seconds, rounded up.
    fn lease_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leader election on lease {lease}: {reason}")]
    InvalidConfig { lease: String, reason: String },
}

/// Acquisition retries wait up to this factor of `retry_period`, so candidates drift apart.
const JITTER_FACTOR: f64 = 1.2;

/// A running election. Dropping it aborts the election without releasing the lease (as a
/// crash would); call [`LeaderHandle::release`] on an orderly shutdown.
#[derive(Debug)]
pub struct LeaderHandle {
    leading: Arc<Leading>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    release_timeout: Duration,
}

impl LeaderHandle {
    /// A receiver whose value is `true` while this replica leads.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.state.subscribe()
    }

    /// Whether this replica leads now.
    pub fn is_leading(&self) -> bool {
        *self.leading.state.borrow()
    }

    /// Stops the election and, if this replica holds the lease, gives it up so another
    /// replica takes over at once instead of waiting for it to expire.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            // The task may have ended already; then there is nothing to stop.
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            // Bounded: a hung API call must not hold up the process's shutdown.
            if tokio::time::timeout(self.release_timeout, &mut task)
                .await
                .is_err()
            {
                warn!("leader election did not stop in time; abandoning the lease");
                task.abort();
            }
        }
        self.leading.stop();
    }
}

impl Drop for LeaderHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.leading.stop();
    }
}

/// Starts the election in a tokio task. Must be called inside a tokio runtime.
pub fn spawn(client: kube::Client, config: LeaseConfig) -> Result<LeaderHandle, LeaderError> {
    config.validate()?;
    let leading = Arc::new(Leading {
        state: watch::channel(false).0,
        stopped: AtomicBool::new(false),
    });
    let (stop_tx, stop_rx) = oneshot::channel();
    let release_timeout = config.renew_deadline;
    let election = Election {
        api: Api::namespaced(client, &config.namespace),
        config,
        observed: None,
        leading: leading.clone(),
    };
    let task = tokio::spawn(election.run(stop_rx));
    Ok(LeaderHandle {
        leading,
        stop: Some(stop_tx),
        task: Some(task),
        release_timeout,
    })
}

/// The Lease as last read or written by us, and when, by our clock, its record last changed.
struct Observed {
    lease: Lease,
    changed_at: Instant,
}

/// What one attempt to acquire or renew found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold the lease, freshly written.
    Holding,
    /// Another identity holds an unexpired lease.
    HeldBy(String),
    /// Our write lost a race (409); the next attempt re-reads.
    Conflict,
}

struct Election {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
    leading: Arc<Leading>,
}

/// The leadership signal, shared by the handle and the election task.
#[derive(Debug)]
struct Leading {
    state: watch::Sender<bool>,
    /// Set once the handle stops the election; `true` can never be published after it.
    stopped: AtomicBool,
}

impl Leading {
    fn set(&self, leading: bool) {
        // Checked under the channel's lock, so an aborted task racing `stop` cannot win.
        self.state.send_if_modified(|current| {
            let next = leading && !self.stopped.load(Ordering::Acquire);
            let changed = *current != next;
            *current = next;
            changed
        });
    }

    /// Receivers must not keep reading `true` from an election that no longer runs.
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.set(false);
    }
}

impl Election {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            let Ok(acquired_at) = self.acquire(&mut stop).await else {
                return;
            };
            self.set_leading(true);
            info!(identity = %self.config.identity, lease = %self.lease_name(), "became leader");
            match self.renew(acquired_at, &mut stop).await {
                Ok(()) => {
                    self.set_leading(false);
                    warn!(identity = %self.config.identity, lease = %self.lease_name(), "lost leadership");
                }
                Err(Stopped) => {
                    self.set_leading(false);
                    self.release_lease().await;
                    return;
                }
            }
        }
    }

    fn lease_name(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    fn set_leading(&self, leading: bool) {
        self.leading.set(leading);
    }

    /// Tries every retry period (with jitter) until we hold the lease; returns when the
    /// successful attempt started.
    async fn acquire(&mut self, stop: &mut oneshot::Receiver<()>) -> Result<Instant, Stopped> {
        let mut last_holder: Option<String> = None;
        loop {
            let started = Instant::now();
            let outcome = tokio::select! {
                _ = &mut *stop => return Err(Stopped),
                // Bounded so a hung request cannot stall the retry cadence forever.
                r = tokio::time::timeout(self.config.renew_deadline, self.try_acquire_or_renew()) => r,
            };
            match outcome {
                Ok(Ok(Attempt::Holding)) => return Ok(started),
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    if last_holder.as_deref() != Some(holder.as_str()) {
                        info!(identity = %self.config.identity, lease = %self.lease_name(), %holder, "lease held by another replica; standing by");
                        last_holder = Some(holder);
                    }
                }
                Ok(Ok(Attempt::Conflict)) => {
                    debug!(lease = %self.lease_name(), "lost a race for the lease; re-reading")
                }
                Ok(Err(e)) => {
                    warn!(identity = %self.config.identity, lease = %self.lease_name(), error = %e, "cannot acquire the lease")
                }
                Err(_) => {
                    warn!(identity = %self.config.identity, lease = %self.lease_name(), "acquiring the lease timed out")
                }
            }
            let wait = jittered(self.config.retry_period);
            tokio::select! {
                _ = &mut *stop => return Err(Stopped),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Renews every retry period; returns when leadership is lost, at the latest
    /// `renew_deadline` after the start of the last successful write.
    async fn renew(
        &mut self,
        acquired_at: Instant,
        stop: &mut oneshot::Receiver<()>,
    ) -> Result<(), Stopped> {
        let mut deadline = acquired_at + self.config.renew_deadline;
        loop {
            // Never sleep past the deadline: stepping down must not wait for the next tick.
            let next = (Instant::now() + self.config.retry_period).min(deadline);
            tokio::select! {
                _ = &mut *stop => return Err(Stopped),
                _ = tokio::time::sleep_until(next) => {}
            }
            let started = Instant::now();
            if started >= deadline {
                warn!(identity = %self.config.identity, lease = %self.lease_name(), "could not renew the lease before the renew deadline");
                return Ok(());
            }
            let outcome = tokio::select! {
                _ = &mut *stop => return Err(Stopped),
                // Cut the request at the deadline: stepping down late is what splits brains.
                r = tokio::time::timeout_at(deadline, self.try_acquire_or_renew()) => r,
            };
            match outcome {
                // Counted from before the request: the write landed no earlier than that.
                Ok(Ok(Attempt::Holding)) => deadline = started + self.config.renew_deadline,
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    warn!(identity = %self.config.identity, lease = %self.lease_name(), %holder, "the lease was taken over");
                    return Ok(());
                }
                Ok(Ok(Attempt::Conflict)) => {
                    debug!(lease = %self.lease_name(), "renewal conflicted; re-reading")
                }
                Ok(Err(e)) => {
                    warn!(identity = %self.config.identity, lease = %self.lease_name(), error = %e, "renewing the lease failed")
                }
                Err(_) => {
                    warn!(identity = %self.config.identity, lease = %self.lease_name(), "could not renew the lease before the renew deadline");
                    return Ok(());
                }
            }
        }
    }

    /// One read and, if the lease is ours to take or keep, one conditional write.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = MicroTime(crate::clock::now());
        let lease = match self.api.get_opt(&self.config.name).await? {
            Some(lease) => lease,
            None => match self.create(now.clone()).await {
                Ok(created) => {
                    self.observe(&created);
                    return Ok(Attempt::Holding);
                }
                // Another candidate created it first: read theirs and judge it as usual.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    match self.api.get_opt(&self.config.name).await? {
                        Some(lease) => lease,
                        None => return Ok(Attempt::Conflict),
                    }
                }
                Err(e) => return Err(e),
            },
        };
        self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.config.identity;
        if !holder.is_empty() && !ours && !self.expired(&spec) {
            return Ok(Attempt::HeldBy(holder));
        }

        let mut next = spec.clone();
        if !ours {
            // Taking over: a new term begins.
            next.acquire_time = Some(now.clone());
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            next.holder_identity = Some(self.config.identity.clone());
        } else if next.acquire_time.is_none() {
            next.acquire_time = Some(now.clone());
        }
        next.renew_time = Some(now);
        next.lease_duration_seconds = Some(self.config.lease_seconds());
        let mut update = lease;
        update.spec = Some(next);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &update)
            .await
        {
            Ok(written) => {
                if !ours {
                    info!(identity = %self.config.identity, lease = %self.lease_name(), previous = %holder, "took the lease");
                }
                self.observe(&written);
                Ok(Attempt::Holding)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    async fn create(&self, now: MicroTime) -> Result<Lease, kube::Error> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(self.config.lease_seconds()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        let created = self.api.create(&PostParams::default(), &lease).await?;
        info!(identity = %self.config.identity, lease = %self.lease_name(), "created the lease");
        Ok(created)
    }

    /// Remembers the record; restarts the expiry clock only when its content changed.
    fn observe(&mut self, lease: &Lease) {
        match &mut self.observed {
            Some(seen) if seen.lease.spec == lease.spec => seen.lease = lease.clone(),
            _ => {
                self.observed = Some(Observed {
                    lease: lease.clone(),
                    changed_at: Instant::now(),
                })
            }
        }
    }

    /// Whether the holder of `spec` let its lease lapse, by our clock.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let Some(seen) = &self.observed else {
            return false;
        };
        let seconds = spec
            .lease_duration_seconds
            .map(|s| u64::try_from(s).unwrap_or(0))
            .unwrap_or_else(|| self.config.lease_duration.as_secs());
        seen.changed_at + Duration::from_secs(seconds) <= Instant::now()
    }

    /// Gives the lease up if the record we last wrote still names us. A conflict means
    /// someone else wrote it since, so it is no longer ours to release.
    async fn release_lease(&mut self) {
        let Some(seen) = &self.observed else {
            return;
        };
        let mut lease = seen.lease.clone();
        // A renewal cut off by the stop may have landed after we last read the lease: on a
        // conflict, read it again and retry while it still names us.
        for _ in 0..3 {
            let Some(spec) = lease.spec.as_mut() else {
                return;
            };
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return;
            }
            spec.holder_identity = None;
            // The shortest the field allows, for readers that still wait it out.
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(crate::clock::now()));
            match self
                .api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => {
                    info!(identity = %self.config.identity, lease = %self.lease_name(), "released the lease");
                    return;
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    match self.api.get_opt(&self.config.name).await {
                        Ok(Some(fresh)) => lease = fresh,
                        _ => break,
                    }
                }
                Err(e) => {
                    warn!(identity = %self.config.identity, lease = %self.lease_name(), error = %e, "could not release the lease; it will expire");
                    return;
                }
            }
        }
        warn!(identity = %self.config.identity, lease = %self.lease_name(), "could not release the lease; it will expire");
    }
}

/// The election was asked to stop.
struct Stopped;

/// `base` stretched by a random fraction up to `JITTER_FACTOR - 1`.
fn jittered(base: Duration) -> Duration {
    // RandomState is freshly keyed per instance: enough randomness for jitter, no extra crate.
    let random = RandomState::new().build_hasher().finish();
    let fraction = (random % 1_000) as f64 / 1_000.0;
    base.mul_f64(1.0 + (JITTER_FACTOR - 1.0) * fraction)
}
