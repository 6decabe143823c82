//! Fault injection: failing or slowing API requests, dropping watches and expiring the
//! versions clients re-watch from, for tests.
//!
//! A request carrying the header [`OBSERVER_HEADER`] is never faulted: a test's own
//! observer (an invariant monitor) sees the cluster as it is while the client under test
//! lives through the faults.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone)]
struct FailRule {
    verb: String,
    resource: String,
    remaining: u32,
    status: u16,
    retry_after: Option<u32>,
}

#[derive(Debug, Clone)]
struct LatencyRule {
    verb: String,
    resource: String,
    delay: Duration,
}

/// What the server should do with one request before serving it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultDecision {
    pub delay: Duration,
    pub fail_with: Option<u16>,
    /// Seconds the failure asks the client to wait (`Retry-After`), as priority and
    /// fairness does with 429.
    pub retry_after: Option<u32>,
}

/// What the faults did so far: a soak run reports what it lived through, not what it asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Injected {
    /// Requests failed, by HTTP status.
    pub failures: BTreeMap<u16, u64>,
    /// Times every open watch stream was ended.
    pub watch_cuts: u64,
    /// Watches answered 410 Gone.
    pub watches_expired: u64,
}

/// Requests with this header (any value) are exempt from every fault.
pub const OBSERVER_HEADER: &str = "x-kubesim-observer";

/// Handle for injecting faults into the API server. `"*"` matches any verb or resource.
///
/// Verbs: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
/// Resources are plural names (`pods`, `leases`, a CRD's plural); subresources match as `pods/status`
/// and also as `pods`.
#[derive(Debug)]
pub struct Faults {
    fail: Mutex<Vec<FailRule>>,
    latency: Mutex<Vec<LatencyRule>>,
    close: watch::Sender<u64>,
    /// Watches resuming from a resourceVersion still to be answered 410 Gone.
    expire: AtomicU32,
    failed: Mutex<BTreeMap<u16, u64>>,
    cuts: AtomicU64,
    expired: AtomicU64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fail: Mutex::new(Vec::new()),
            latency: Mutex::new(Vec::new()),
            close: watch::channel(0).0,
            expire: AtomicU32::new(0),
            failed: Mutex::default(),
            cuts: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        }
    }
}

fn matches(rule_verb: &str, rule_res: &str, verb: &str, resource: &str) -> bool {
    let base = resource.split('/').next().unwrap_or(resource);
    (rule_verb == "*" || rule_verb == verb)
        && (rule_res == "*" || rule_res == resource || rule_res == base)
}

impl Faults {
    /// The next `count` requests matching `verb` and `resource` fail with `status`.
    pub fn fail_next(&self, verb: &str, resource: &str, count: u32, status: u16) {
        self.push_fail(verb, resource, count, status, None);
    }

    /// Like [`Faults::fail_next`], with a `Retry-After: seconds` header (and
    /// `details.retryAfterSeconds`), as the API server answers 429 when overloaded.
    pub fn fail_next_retry_after(
        &self,
        verb: &str,
        resource: &str,
        count: u32,
        status: u16,
        seconds: u32,
    ) {
        self.push_fail(verb, resource, count, status, Some(seconds));
    }

    fn push_fail(
        &self,
        verb: &str,
        resource: &str,
        count: u32,
        status: u16,
        retry_after: Option<u32>,
    ) {
        self.fail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(FailRule {
                verb: verb.to_string(),
                resource: resource.to_string(),
                remaining: count,
                status,
                retry_after,
            });
    }

    /// Every request matching `verb` and `resource` waits `delay` first (until cleared).
    pub fn add_latency(&self, verb: &str, resource: &str, delay: Duration) {
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(LatencyRule {
                verb: verb.to_string(),
                resource: resource.to_string(),
                delay,
            });
    }

    /// Ends every open watch stream; clients must re-watch.
    pub fn close_watches(&self) {
        self.cuts.fetch_add(1, Ordering::Relaxed);
        self.close.send_modify(|n| *n += 1);
    }

    /// The next `count` watches that resume from a resourceVersion are answered 410 Gone
    /// (an `ERROR` event with reason `Expired`, as the real server answers a compacted
    /// version): clients must list again. Watches from scratch are served.
    pub fn expire_next_watches(&self, count: u32) {
        self.expire.fetch_add(count, Ordering::SeqCst);
    }

    /// Consumes one pending expiry for a watch resuming from a resourceVersion, if any.
    pub fn take_watch_expiry(&self) -> bool {
        let taken = self
            .expire
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if taken {
            self.expired.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// What the faults did so far (clearing the rules does not reset it).
    pub fn injected(&self) -> Injected {
        Injected {
            failures: self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            watch_cuts: self.cuts.load(Ordering::Relaxed),
            watches_expired: self.expired.load(Ordering::Relaxed),
        }
    }

    /// Removes all failure and latency rules and pending watch expiries.
    pub fn clear(&self) {
        self.expire.store(0, Ordering::SeqCst);
        self.fail.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Consumes a matching failure rule, if any, and sums the matching latencies.
    pub fn decide(&self, verb: &str, resource: &str) -> FaultDecision {
        let delay = self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| matches(&r.verb, &r.resource, verb, resource))
            .map(|r| r.delay)
            .sum();
        let mut fail = self.fail.lock().unwrap_or_else(|e| e.into_inner());
        let mut fail_with = None;
        let mut retry_after = None;
        if let Some(rule) = fail
            .iter_mut()
            .find(|r| r.remaining > 0 && matches(&r.verb, &r.resource, verb, resource))
        {
            rule.remaining -= 1;
            fail_with = Some(rule.status);
            retry_after = rule.retry_after;
            *self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(rule.status)
                .or_default() += 1;
        }
        fail.retain(|r| r.remaining > 0);
        FaultDecision {
            delay,
            fail_with,
            retry_after,
        }
    }

    /// A receiver that changes whenever watches must close.
    pub fn watch_closer(&self) -> watch::Receiver<u64> {
        self.close.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_next_fails_exactly_count_matching_requests() {
        let f = Faults::default();
        f.fail_next("patch", "pods", 2, 500);
        assert_eq!(f.decide("get", "pods").fail_with, None);
        assert_eq!(f.decide("patch", "pods/status").fail_with, Some(500));
        assert_eq!(f.decide("patch", "pods").fail_with, Some(500));
        assert_eq!(f.decide("patch", "pods").fail_with, None);
        f.add_latency("*", "leases", Duration::from_millis(5));
        assert_eq!(f.decide("update", "leases").delay, Duration::from_millis(5));
        assert_eq!(f.injected().failures, BTreeMap::from([(500, 2)]));
    }

    #[test]
    fn watch_expiries_are_consumed_one_per_resumed_watch() {
        let f = Faults::default();
        assert!(!f.take_watch_expiry());
        f.expire_next_watches(2);
        assert!(f.take_watch_expiry());
        assert!(f.take_watch_expiry());
        assert!(!f.take_watch_expiry());
        f.expire_next_watches(1);
        f.clear();
        assert!(!f.take_watch_expiry());
        assert_eq!(f.injected().watches_expired, 2);
    }
}
