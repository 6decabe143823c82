//! An invariant monitor: watches pods, KubervisorServices, events and the leader Lease
//! through the API, on a client of its own (on kubesim its requests carry
//! [`kubesim::faults::OBSERVER_HEADER`], so injected faults never blur what it sees),
//! records every version it is shown, one history per KubervisorService it is told about
//! (one watch per resource type feeds them all: `route.rs`), and checks the operator's
//! promises on each history, continuously and once more at the end.
//!
//! Used by the operator's end-to-end tests (one KubervisorService, checked every second)
//! and by `kubervisor-bench soak` (hundreds of them).
//!
//! Terms, as the operator defines them (`kubervisor-core`, `plan.rs`):
//! - a pod is **ready** when Running, `Ready` and not terminating; it **serves** when ready
//!   and labelled `kubervisor/traffic=yes`; it is **kept out** by breaker `b` when ready,
//!   labelled `traffic=no` and `kubervisor/strategy=b`. Paused pods (`traffic=pause`) are
//!   parked by the activator and are not given back by the floor, so they are not counted.
//! - the **floor** of breaker `b` is max(`minPodsAvailableCount`,
//!   ⌈`minPodsAvailableRatio` % × ready pods⌉), computed here, not by the operator's code.
//! - an **ejection** is a new value of the pod's `breaker/breakAt` annotation (it stays
//!   after a re-activation, so an ejection is seen even if its `traffic=no` version was
//!   not); it **ends** when the pod's traffic leaves `no` (yes: re-activated, or handed
//!   back when the pod loses its `kubervisor/name`; pause: paused) or the pod's deletion
//!   begins. A pod out of traffic whose deletion has begun may still be given back or
//!   paused by the operator during its grace period (decided on a view from just before):
//!   that is a re-activation or a pause, with its events, though its ejection has ended.
//! - an **outside change** is anything Kubervisor does not decide: a pod appearing,
//!   disappearing, or gaining or losing readiness; a change of the KubervisorService's spec.
//!
//! The checks (`Check`):
//! - **(a) floor**: whenever some pod is kept out by `b` while fewer pods serve than `b`'s
//!   floor, the last outside change is at most `restore_window` old. So an ejection that
//!   breaks the floor is a violation at once, and after outside losses the ejected pods
//!   must be given back within the window. Nothing is checked while the resource is dry
//!   run or being deleted.
//! - **(b) one ejection at a time**: a pod is not ejected again before its previous
//!   ejection ended, and its `breaker/retryCount` grows by at most one per ejection.
//! - **(c) activation on time**: every ejection ends by its due time plus
//!   `activation_slack` (2 s unless a scenario's fault keeps the operator from the API
//!   longer). Due time: `breakAt` + period (periodic) or period × max(retries, 1) (retry
//!   modes), capped by `maxEjectionTime`; `breakAt` itself once a retry mode's
//!   `maxRetryCount` is exceeded. A pod whose kill a PodDisruptionBudget refused
//!   (`KillBlocked`) is exempt. An ejection is counted from its `breakAt`, or from when it
//!   was first seen if that is earlier: an ejection time written by a clock running ahead
//!   does not buy its pod more time out.
//! - **(f) activation not early**: an ejection ended by a re-activation ends no earlier
//!   than its due time minus `early_slack`, unless the floor gave the pod back
//!   (`FloorRestored`) or its `breakAt` was written ahead of the clock (beyond
//!   `early_slack` after it was first seen: its time out cannot be measured).
//! - **(d) no standby writes** (with a Lease to follow): every decision is observed within
//!   `leader_tolerance` of an instant at which its event's reporting instance held the
//!   Lease (by the Lease's `acquireTime`), and not after that term's last `renewTime` +
//!   `leaseDurationSeconds` (+ tolerance): the old leader stops before anyone may take over.
//! - **(e) one event per decision**: each ejection, re-activation (`PodActivated` or
//!   `FloorRestored`), pause and activator kill has exactly one event regarding the pod and
//!   one regarding the KubervisorService (naming the pod as related), and no such event
//!   exists without its decision. Hand-backs are not decisions; a pod deleted while out
//!   is a kill only when its activator would kill it (otherwise an event is optional).
//!   Events are published after their write: while running, decisions and events younger
//!   than `settle` are not judged yet; a decision observed within 2 s before (1 s after)
//!   the test SIGKILLed the operator may lack its event, which died with the process.
//!
//! A violation is reported with the recorded versions of the objects that show it.

mod route;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kubervisor_api::{ActivatorMode, KubervisorService, ResolvedSpec};

pub use route::Selector;
pub use watch::{Finding, Monitor, MonitorError, Report};

/// What the monitor is told about a scenario.
#[derive(Clone, Debug)]
pub struct MonitorConfig {
    pub namespace: String,
    /// The KubervisorService whose promises are checked.
    pub kvs: String,
    /// The label selector of the Service's pods (without the traffic requirement).
    pub pod_selector: String,
    /// The Lease of leader election, when replicas elect one.
    pub lease: Option<String>,
    pub limits: Limits,
}

/// The tolerances of the checks.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub restore_window: Duration,
    pub activation_slack: Duration,
    pub early_slack: Duration,
    pub leader_tolerance: Duration,
    pub settle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            restore_window: Duration::from_secs(3),
            activation_slack: Duration::from_secs(2),
            early_slack: Duration::from_secs(1),
            leader_tolerance: Duration::from_secs(1),
            settle: Duration::from_secs(3),
        }
    }
}

impl MonitorConfig {
    /// The harness's KubervisorService `web` over the pods `app=web`.
    pub fn web(namespace: &str) -> MonitorConfig {
        MonitorConfig {
            namespace: namespace.to_string(),
            kvs: "web".into(),
            pod_selector: "app=web".into(),
            lease: None,
            limits: Limits::default(),
        }
    }
}

/// One version of a pod, as far as the checks care.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodSeen {
    pub name: String,
    pub uid: String,
    pub ready: bool,
    pub terminating: bool,
    pub traffic: Option<String>,
    pub strategy: Option<String>,
    /// `kubervisor/name`.
    pub owner: Option<String>,
    pub break_at: Option<String>,
    pub retry_count: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KvsSeen {
    pub deleting: bool,
    /// `None` when the spec does not resolve.
    pub spec: Option<ResolvedSpec>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EventSeen {
    pub name: String,
    pub reason: String,
    pub regarding_kind: String,
    pub regarding: String,
    pub related: Option<String>,
    pub instance: String,
    pub time: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LeaseSeen {
    pub holder: Option<String>,
    pub acquired: Option<Timestamp>,
    pub renewed: Option<Timestamp>,
    pub duration: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// A pod version; `initial` for the monitor's first listing (its state is not a decision).
    Pod {
        pod: PodSeen,
        initial: bool,
    },
    PodGone {
        name: String,
        uid: String,
    },
    Kvs(Option<KvsSeen>),
    Event(EventSeen),
    Lease(LeaseSeen),
    /// The test SIGKILLed an operator process.
    OperatorKilled,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub at: Timestamp,
    pub seen: Seen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    Floor,
    EjectedTwice,
    ActivationLate,
    StandbyWrite,
    EventPerDecision,
    ActivationEarly,
}

impl Check {
    fn label(self) -> &'static str {
        match self {
            Check::Floor => "(a) floor",
            Check::EjectedTwice => "(b) ejected twice",
            Check::ActivationLate => "(c) activation late",
            Check::StandbyWrite => "(d) standby write",
            Check::EventPerDecision => "(e) one event per decision",
            Check::ActivationEarly => "(f) activation early",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    pub check: Check,
    pub at: Timestamp,
    /// What it is about: a pod, a breaker.
    pub subject: String,
    pub message: String,
    /// Where the evidence starts, when not at the beginning of the history.
    pub from: Option<Timestamp>,
    /// The recorded versions that show it, rendered.
    pub history: Vec<String>,
}

impl Violation {
    /// The same violation seen again later (its message may have grown) has the same key.
    fn key(&self) -> (Check, String, Timestamp) {
        (self.check, self.subject.clone(), self.at)
    }

    pub fn render(&self, start: Timestamp) -> String {
        let mut out = format!(
            "{} at {}: {}: {}\n",
            self.check.label(),
            offset(start, self.at),
            self.subject,
            self.message
        );
        for line in &self.history {
            out.push_str("    ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

fn offset(start: Timestamp, at: Timestamp) -> String {
    if at == Timestamp::MIN {
        return "never".into();
    }
    format!("{:+.3}s", at.duration_since(start).as_secs_f64())
}

fn render(start: Timestamp, record: &Record) -> String {
    let what = match &record.seen {
        Seen::Pod { pod, initial } => format!(
            "pod {} {}ready={} terminating={} traffic={} strategy={} name={} breakAt={} retryCount={}",
            pod.name,
            if *initial { "(initial) " } else { "" },
            pod.ready,
            pod.terminating,
            pod.traffic.as_deref().unwrap_or("-"),
            pod.strategy.as_deref().unwrap_or("-"),
            pod.owner.as_deref().unwrap_or("-"),
            pod.break_at.as_deref().unwrap_or("-"),
            pod.retry_count.map_or("-".into(), |c| c.to_string()),
        ),
        Seen::PodGone { name, .. } => format!("pod {name} deleted"),
        Seen::Kvs(None) => "KubervisorService deleted".into(),
        Seen::Kvs(Some(kvs)) => format!(
            "KubervisorService deleting={} floors={:?}",
            kvs.deleting,
            kvs.spec.as_ref().map(|s| s
                .breakers
                .iter()
                .map(|b| (
                    b.name.clone(),
                    b.min_pods_available_count,
                    b.min_pods_available_ratio
                ))
                .collect::<Vec<_>>())
        ),
        Seen::Event(e) => format!(
            "event {} on {} {} (related {}) by {}",
            e.reason,
            e.regarding_kind,
            e.regarding,
            e.related.as_deref().unwrap_or("-"),
            e.instance
        ),
        Seen::OperatorKilled => "operator killed (SIGKILL)".into(),
        Seen::Lease(l) => format!(
            "lease holder={} acquired={} renewed={} duration={}s",
            l.holder.as_deref().unwrap_or("-"),
            l.acquired.map_or("-".into(), |t| offset(start, t)),
            l.renewed.map_or("-".into(), |t| offset(start, t)),
            l.duration.as_secs()
        ),
    };
    format!("{} {what}", offset(start, record.at))
}

/// A decision observed this long before a kill (or, as the watch lags, after it) may have
/// lost its event with the killed process.
const KILL_TAKES_EVENTS: (SignedDuration, SignedDuration) =
    (SignedDuration::from_secs(2), SignedDuration::from_secs(1));

/// The decisions a pod's history shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Decision {
    Eject,
    Reactivate,
    Pause,
    Kill,
}

impl Decision {
    fn of_reason(reason: &str) -> Option<Decision> {
        match reason {
            "PodEjected" => Some(Decision::Eject),
            "PodActivated" | "FloorRestored" => Some(Decision::Reactivate),
            "PodPaused" => Some(Decision::Pause),
            "PodKilled" => Some(Decision::Kill),
            _ => None,
        }
    }

    fn reasons(self) -> &'static str {
        match self {
            Decision::Eject => "PodEjected",
            Decision::Reactivate => "PodActivated/FloorRestored",
            Decision::Pause => "PodPaused",
            Decision::Kill => "PodKilled",
        }
    }
}

#[derive(Clone, Debug)]
struct Ejection {
    uid: String,
    pod: String,
    break_at: String,
    retries: u32,
    breaker: Option<String>,
    /// When the monitor first saw it.
    seen: Timestamp,
    ended: Option<Timestamp>,
    /// Ended by a re-activation seen as such (not a hand-back, a pause, a deletion).
    reactivated: bool,
}

/// Replays `history` and returns what it violates, judged at `now`. `finished` judges
/// everything (the scenario is over and events had `settle` to arrive).
pub fn check(
    history: &[Record],
    config: &MonitorConfig,
    start: Timestamp,
    now: Timestamp,
    finished: bool,
) -> Vec<Violation> {
    let limits = config.limits;
    let mut out = Vec::new();
    let mut pods: BTreeMap<String, PodSeen> = BTreeMap::new();
    let mut kvs: Option<KvsSeen> = None;
    // What the monitor finds at its start is judged like anything later.
    let mut last_outside = Timestamp::MIN;
    // Per breaker: since when the floor is short while it keeps pods out.
    let mut breaches: BTreeMap<String, (Timestamp, bool)> = BTreeMap::new();
    let mut ejections: Vec<Ejection> = Vec::new();
    // (pod, decision, observed at); maybe-kills are deletions an event may or may not report.
    let mut decisions: Vec<(String, Decision, Timestamp)> = Vec::new();
    let mut maybe_kills: Vec<(String, Timestamp)> = Vec::new();
    let mut events: Vec<(Timestamp, EventSeen)> = Vec::new();
    let mut leases: Vec<(Timestamp, LeaseSeen)> = Vec::new();
    let mut kills: Vec<Timestamp> = Vec::new();

    let window = SignedDuration::try_from(limits.restore_window).unwrap_or_default();
    let judge_floor = |at: Timestamp,
                       last_outside: Timestamp,
                       breaches: &BTreeMap<String, (Timestamp, bool)>,
                       out: &mut Vec<Violation>,
                       reported: &mut BTreeSet<(String, Timestamp)>| {
        for (breaker, (since, _)) in breaches {
            if at.duration_since(last_outside) > window
                && reported.insert((breaker.clone(), *since))
            {
                let excused_until = last_outside + window;
                out.push(Violation {
                    check: Check::Floor,
                    at: (*since).max(excused_until),
                    subject: format!("breaker {breaker}"),
                    message: format!(
                        "pods kept out by {breaker} while fewer pods serve than its floor, since {}, last outside change at {} (restore window {:?})",
                        offset(start, *since),
                        offset(start, last_outside),
                        limits.restore_window
                    ),
                    from: Some(if last_outside == Timestamp::MIN {
                        *since - SignedDuration::from_secs(1)
                    } else {
                        (*since).min(last_outside) - SignedDuration::from_secs(1)
                    }),
                    history: Vec::new(),
                });
            }
        }
    };
    let mut floor_reported: BTreeSet<(String, Timestamp)> = BTreeSet::new();

    for record in history {
        let at = record.at;
        judge_floor(at, last_outside, &breaches, &mut out, &mut floor_reported);
        match &record.seen {
            Seen::Pod { pod, initial } => {
                let prev = pods.get(&pod.uid).cloned();
                let capable = |p: &PodSeen| p.ready && !p.terminating;
                if !*initial && prev.as_ref().is_some_and(capable) != capable(pod) {
                    last_outside = at;
                }
                let open = ejections
                    .iter()
                    .rposition(|e| e.uid == pod.uid && e.ended.is_none());
                let new_break = pod.break_at.is_some()
                    && prev.as_ref().map(|p| &p.break_at) != Some(&pod.break_at);
                if new_break && !*initial && prev.is_some() {
                    let retries = pod.retry_count.unwrap_or(0);
                    let last = ejections
                        .iter()
                        .rev()
                        .find(|e| e.uid == pod.uid)
                        .map(|e| e.retries);
                    if let Some(index) = open {
                        out.push(Violation {
                            check: Check::EjectedTwice,
                            at,
                            subject: format!("pod {}", pod.name),
                            message: format!(
                                "ejected at {} while its ejection of {} had not ended",
                                pod.break_at.as_deref().unwrap_or("-"),
                                ejections[index].break_at
                            ),
                            from: None,
                            history: Vec::new(),
                        });
                        ejections[index].ended = Some(at);
                    }
                    if let Some(last) = last
                        && retries > last + 1
                    {
                        out.push(Violation {
                            check: Check::EjectedTwice,
                            at,
                            subject: format!("pod {}", pod.name),
                            message: format!(
                                "retryCount went from {last} to {retries} in one ejection"
                            ),
                            from: None,
                            history: Vec::new(),
                        });
                    }
                    // Ejected on a view from just before the pod's deletion began: a
                    // decision with its events, ended at once, and the deletion is not a
                    // kill of the operator's.
                    let deleted_before =
                        pod.terminating && prev.as_ref().is_some_and(|p| p.terminating);
                    ejections.push(Ejection {
                        uid: pod.uid.clone(),
                        pod: pod.name.clone(),
                        break_at: pod.break_at.clone().unwrap_or_default(),
                        retries,
                        breaker: pod.strategy.clone(),
                        seen: at,
                        ended: deleted_before.then_some(at),
                        reactivated: false,
                    });
                    decisions.push((pod.name.clone(), Decision::Eject, at));
                    // Both versions were missed in between: the pod came back first.
                    if pod.traffic.as_deref() != Some("no") {
                        close(&mut ejections, &pod.uid, at);
                        decisions.push((pod.name.clone(), Decision::Reactivate, at));
                    }
                } else if let Some(index) = open {
                    let from_no = prev.as_ref().and_then(|p| p.traffic.as_deref()) == Some("no");
                    match pod.traffic.as_deref() {
                        Some("no") => {}
                        Some("pause") if from_no => {
                            ejections[index].ended = Some(at);
                            decisions.push((pod.name.clone(), Decision::Pause, at));
                        }
                        _ if pod.owner.is_none() => ejections[index].ended = Some(at),
                        Some("yes") => {
                            ejections[index].ended = Some(at);
                            ejections[index].reactivated = true;
                            decisions.push((pod.name.clone(), Decision::Reactivate, at));
                        }
                        _ => ejections[index].ended = Some(at),
                    }
                    if pod.terminating && ejections[index].ended.is_none() {
                        ejections[index].ended = Some(at);
                        note_kill(
                            &ejections[index],
                            kvs.as_ref(),
                            at,
                            &mut decisions,
                            &mut maybe_kills,
                        );
                    }
                } else if pod.terminating
                    && prev.as_ref().and_then(|p| p.traffic.as_deref()) == Some("no")
                    && ejections.iter().any(|e| e.uid == pod.uid)
                {
                    // The pod's ejection ended when its deletion began; the operator, on a
                    // view from just before, may still give it back or pause it during its
                    // grace period: a decision, with its events.
                    match pod.traffic.as_deref() {
                        Some("yes") => decisions.push((pod.name.clone(), Decision::Reactivate, at)),
                        Some("pause") => decisions.push((pod.name.clone(), Decision::Pause, at)),
                        _ => {}
                    }
                } else if *initial && pod.traffic.as_deref() == Some("no") && pod.break_at.is_some()
                {
                    // Out before the monitor started: judged like any ejection from now on.
                    ejections.push(Ejection {
                        uid: pod.uid.clone(),
                        pod: pod.name.clone(),
                        break_at: pod.break_at.clone().unwrap_or_default(),
                        retries: pod.retry_count.unwrap_or(0),
                        breaker: pod.strategy.clone(),
                        seen: at,
                        ended: None,
                        reactivated: false,
                    });
                }
                pods.insert(pod.uid.clone(), pod.clone());
            }
            Seen::PodGone { uid, .. } => {
                if let Some(prev) = pods.remove(uid) {
                    if prev.ready && !prev.terminating {
                        last_outside = at;
                    }
                    if let Some(index) = ejections
                        .iter()
                        .rposition(|e| e.uid == *uid && e.ended.is_none())
                    {
                        ejections[index].ended = Some(at);
                        note_kill(
                            &ejections[index],
                            kvs.as_ref(),
                            at,
                            &mut decisions,
                            &mut maybe_kills,
                        );
                    }
                }
            }
            Seen::Kvs(next) => {
                let floors = |k: &Option<KvsSeen>| {
                    k.as_ref().and_then(|k| k.spec.as_ref()).map(|s| {
                        s.breakers
                            .iter()
                            .map(|b| (b.min_pods_available_count, b.min_pods_available_ratio))
                            .collect::<Vec<_>>()
                    })
                };
                // The resource's first appearance is not a change of floor.
                if kvs.is_some() && floors(&kvs) != floors(next) {
                    last_outside = at;
                }
                kvs = next.clone();
            }
            Seen::Event(event) => events.push((at, event.clone())),
            Seen::Lease(lease) => leases.push((at, lease.clone())),
            Seen::OperatorKilled => kills.push(at),
        }
        breaches = floor_breaches(&pods, kvs.as_ref(), &config.kvs)
            .into_iter()
            .map(|b| {
                let since = breaches.get(&b).map_or(at, |(since, _)| *since);
                (b, (since, true))
            })
            .collect();
    }
    judge_floor(now, last_outside, &breaches, &mut out, &mut floor_reported);

    // (c) every ejection ends on time.
    let slack = SignedDuration::try_from(limits.activation_slack).unwrap_or_default();
    let blocked: BTreeSet<&str> = events
        .iter()
        .filter(|(_, e)| e.reason == "KillBlocked" && e.regarding_kind == "Pod")
        .map(|(_, e)| e.regarding.as_str())
        .collect();
    let judging = kvs
        .as_ref()
        .and_then(|k| k.spec.as_ref().filter(|s| !s.dry_run && !k.deleting));
    if let Some(spec) = judging {
        for ejection in &ejections {
            if blocked.contains(ejection.pod.as_str()) {
                continue;
            }
            let Some(due) = due_at(spec, ejection) else {
                continue;
            };
            let deadline = due + slack;
            let ended = ejection.ended.unwrap_or(now);
            if ended > deadline {
                out.push(Violation {
                    check: Check::ActivationLate,
                    at: deadline,
                    subject: format!("pod {}", ejection.pod),
                    message: format!(
                        "ejected at {} (retry {}), due at {}, {} at {}",
                        ejection.break_at,
                        ejection.retries,
                        offset(start, due),
                        if ejection.ended.is_some() {
                            "ended"
                        } else {
                            "still out"
                        },
                        offset(start, ended)
                    ),
                    from: None,
                    history: Vec::new(),
                });
            }
        }
    }

    // (f) no re-activation before its time, judged once its events had time to arrive.
    let settle = SignedDuration::try_from(limits.settle).unwrap_or_default();
    let cut = if finished { now } else { now - settle };
    let early = SignedDuration::try_from(limits.early_slack).unwrap_or_default();
    if let Some(spec) = judging {
        for ejection in &ejections {
            let Some(ended) = ejection
                .ended
                .filter(|at| ejection.reactivated && *at <= cut)
            else {
                continue;
            };
            let Ok(break_at) = ejection.break_at.parse::<Timestamp>() else {
                continue;
            };
            let restored = events.iter().any(|(at, e)| {
                e.reason == "FloorRestored"
                    && e.regarding_kind == "Pod"
                    && e.regarding == ejection.pod
                    && *at >= ejection.seen
            });
            if restored || break_at > ejection.seen + early {
                continue;
            }
            let Some(due) = due_from(spec, ejection, break_at) else {
                continue;
            };
            if ended < due - early {
                out.push(Violation {
                    check: Check::ActivationEarly,
                    at: ended,
                    subject: format!("pod {}", ejection.pod),
                    message: format!(
                        "ejected at {} (retry {}), due at {}, re-activated at {}",
                        ejection.break_at,
                        ejection.retries,
                        offset(start, due),
                        offset(start, ended)
                    ),
                    from: None,
                    history: Vec::new(),
                });
            }
        }
    }

    // (e) one event per decision, on the pod and on the resource.
    let decision_events: Vec<(Timestamp, &EventSeen, Decision)> = events
        .iter()
        .filter_map(|(at, e)| Decision::of_reason(&e.reason).map(|d| (*at, e, d)))
        .collect();
    let mut subjects: BTreeSet<(String, Decision)> =
        decisions.iter().map(|(p, d, _)| (p.clone(), *d)).collect();
    for (_, e, d) in &decision_events {
        let pod = if e.regarding_kind == "Pod" {
            e.regarding.clone()
        } else {
            e.related.clone().unwrap_or_default()
        };
        subjects.insert((pod, *d));
    }
    for (pod, decision) in &subjects {
        let decided: Vec<Timestamp> = decisions
            .iter()
            .filter(|(p, d, _)| p == pod && d == decision)
            .map(|(_, _, at)| *at)
            .collect();
        let optional = if *decision == Decision::Kill {
            maybe_kills.iter().filter(|(p, _)| p == pod).count()
        } else {
            0
        };
        for on_pod in [true, false] {
            let published: Vec<Timestamp> = decision_events
                .iter()
                .filter(|(_, e, d)| {
                    d == decision
                        && if on_pod {
                            e.regarding_kind == "Pod" && e.regarding == *pod
                        } else {
                            e.regarding_kind == "KubervisorService"
                                && e.regarding == config.kvs
                                && e.related.as_deref() == Some(pod.as_str())
                        }
                })
                .map(|(at, _, _)| *at)
                .collect();
            let on = if on_pod {
                format!("pod {pod}")
            } else {
                format!("KubervisorService {}", config.kvs)
            };
            let decided_by_cut = decided.iter().filter(|at| **at <= cut).count();
            let published_by_cut = published.iter().filter(|at| **at <= cut).count();
            // An event goes out after its write: a kill right after the write takes it along.
            let killed_before_published = decided
                .iter()
                .filter(|at| {
                    kills.iter().any(|kill| {
                        **at >= *kill - KILL_TAKES_EVENTS.0 && **at <= *kill + KILL_TAKES_EVENTS.1
                    })
                })
                .count();
            if decided_by_cut > published.len() + killed_before_published {
                out.push(Violation {
                    check: Check::EventPerDecision,
                    at: decided[published.len()],
                    subject: format!("pod {pod}"),
                    message: format!(
                        "{} {:?} decision(s), {} {} event(s) on {on}",
                        decided.len(),
                        decision,
                        published.len(),
                        decision.reasons()
                    ),
                    from: None,
                    history: Vec::new(),
                });
            } else if published_by_cut > decided.len() + optional {
                out.push(Violation {
                    check: Check::EventPerDecision,
                    at: published[decided.len() + optional],
                    subject: format!("pod {pod}"),
                    message: format!(
                        "{} {} event(s) on {on} for {} {:?} decision(s)",
                        published.len(),
                        decision.reasons(),
                        decided.len(),
                        decision
                    ),
                    from: None,
                    history: Vec::new(),
                });
            }
        }
    }

    // (d) only the Lease holder decides.
    if config.lease.is_some() {
        let tolerance = SignedDuration::try_from(limits.leader_tolerance).unwrap_or_default();
        for (pod, decision) in &subjects {
            let decided: Vec<Timestamp> = decisions
                .iter()
                .filter(|(p, d, _)| p == pod && d == decision)
                .map(|(_, _, at)| *at)
                .collect();
            let mut by: Vec<(Timestamp, &EventSeen)> = decision_events
                .iter()
                .filter(|(_, e, d)| {
                    d == decision && e.regarding_kind == "Pod" && e.regarding == *pod
                })
                .map(|(at, e, _)| (*at, *e))
                .collect();
            by.sort_by_key(|(at, _)| *at);
            for (index, (published, event)) in by.iter().enumerate() {
                let at = decided.get(index).copied().unwrap_or(*published);
                if let Some(why) = standby(&leases, &event.instance, at, tolerance) {
                    out.push(Violation {
                        check: Check::StandbyWrite,
                        at,
                        subject: format!("pod {pod}"),
                        message: format!("{} by {}: {why}", event.reason, event.instance),
                        from: None,
                        history: Vec::new(),
                    });
                }
            }
        }
    }

    for violation in &mut out {
        violation.history = evidence(history, violation, start);
    }
    out
}

fn close(ejections: &mut [Ejection], uid: &str, at: Timestamp) {
    if let Some(e) = ejections
        .iter_mut()
        .rev()
        .find(|e| e.uid == uid && e.ended.is_none())
    {
        e.ended = Some(at);
    }
}

/// A pod deleted while out: a decision when its activator would kill it now.
fn note_kill(
    ejection: &Ejection,
    kvs: Option<&KvsSeen>,
    at: Timestamp,
    decisions: &mut Vec<(String, Decision, Timestamp)>,
    maybe: &mut Vec<(String, Timestamp)>,
) {
    let activator = kvs
        .and_then(|k| k.spec.as_ref())
        .map(|s| s.activator_for(ejection.breaker.as_deref()).clone());
    let exhausted = activator
        .is_some_and(|a| a.mode != ActivatorMode::Periodic && ejection.retries > a.max_retry_count);
    if exhausted {
        decisions.push((ejection.pod.clone(), Decision::Kill, at));
    } else {
        maybe.push((ejection.pod.clone(), at));
    }
}

/// Breakers whose floor is short while they keep pods out.
fn floor_breaches(
    pods: &BTreeMap<String, PodSeen>,
    kvs: Option<&KvsSeen>,
    kvs_name: &str,
) -> Vec<String> {
    let Some(spec) = kvs.filter(|k| !k.deleting).and_then(|k| k.spec.as_ref()) else {
        return Vec::new();
    };
    if spec.dry_run {
        return Vec::new();
    }
    let ready: Vec<&PodSeen> = pods
        .values()
        .filter(|p| p.ready && !p.terminating)
        .collect();
    let serving = ready
        .iter()
        .filter(|p| p.traffic.as_deref() == Some("yes"))
        .count();
    let mut short = Vec::new();
    for breaker in &spec.breakers {
        let by_ratio = (ready.len() as u64 * u64::from(breaker.min_pods_available_ratio))
            .div_ceil(100) as usize;
        let floor = (breaker.min_pods_available_count as usize).max(by_ratio);
        let kept_out = ready.iter().any(|p| {
            p.traffic.as_deref() == Some("no")
                && p.strategy.as_deref() == Some(breaker.name.as_str())
                && p.owner.as_deref() == Some(kvs_name)
        });
        if kept_out && serving < floor {
            short.push(breaker.name.clone());
        }
    }
    short
}

/// When `ejection` is due, counted from its `breakAt` or, if earlier, from when it was
/// first seen.
fn due_at(spec: &ResolvedSpec, ejection: &Ejection) -> Option<Timestamp> {
    let break_at: Timestamp = ejection.break_at.parse().ok()?;
    due_from(spec, ejection, break_at.min(ejection.seen))
}

/// When `ejection` is due, counted from `break_at`.
fn due_from(spec: &ResolvedSpec, ejection: &Ejection, break_at: Timestamp) -> Option<Timestamp> {
    let activator = spec.activator_for(ejection.breaker.as_deref());
    if activator.mode != ActivatorMode::Periodic && ejection.retries > activator.max_retry_count {
        return Some(break_at);
    }
    let waits = match activator.mode {
        ActivatorMode::Periodic => 1,
        _ => ejection.retries.max(1),
    };
    let mut wait = activator.period * waits;
    if let Some(cap) = activator.max_ejection_time {
        wait = wait.min(cap);
    }
    Some(break_at + SignedDuration::try_from(wait).ok()?)
}

/// Why `instance` was not the leader at `at`, if it was not.
fn standby(
    leases: &[(Timestamp, LeaseSeen)],
    instance: &str,
    at: Timestamp,
    tolerance: SignedDuration,
) -> Option<String> {
    // Terms by acquisition: (holder, acquired, last renewal seen, duration).
    let mut terms: Vec<(Option<String>, Timestamp, Timestamp, Duration)> = Vec::new();
    for (seen_at, lease) in leases {
        let acquired = lease.acquired.unwrap_or(*seen_at);
        let renewed = lease.renewed.unwrap_or(acquired);
        match terms
            .iter_mut()
            .find(|t| t.0 == lease.holder && t.1 == acquired)
        {
            Some(term) => term.2 = term.2.max(renewed),
            None => terms.push((lease.holder.clone(), acquired, renewed, lease.duration)),
        }
    }
    terms.sort_by_key(|t| t.1);
    let holder_at = |t: Timestamp| terms.iter().rev().find(|term| term.1 <= t);
    let held = |t: Timestamp| holder_at(t).is_some_and(|term| term.0.as_deref() == Some(instance));
    if !held(at - tolerance) && !held(at + tolerance) && !held(at) {
        let holder = holder_at(at).and_then(|t| t.0.clone());
        return Some(format!(
            "the Lease was held by {} then",
            holder.as_deref().unwrap_or("nobody")
        ));
    }
    let term = [at, at - tolerance, at + tolerance]
        .into_iter()
        .filter_map(holder_at)
        .find(|term| term.0.as_deref() == Some(instance))?;
    let expiry = term.2 + SignedDuration::try_from(term.3).ok()?;
    (at > expiry + tolerance).then(|| {
        format!(
            "its term's last renewal was at {}, the Lease expired at {expiry}",
            term.2
        )
    })
}

/// The recorded versions that show `violation`: everything about its pod, or the fleet
/// around the floor breach.
fn evidence(history: &[Record], violation: &Violation, start: Timestamp) -> Vec<String> {
    let pod = violation.subject.strip_prefix("pod ");
    let relevant = |r: &Record| match (&r.seen, pod) {
        (Seen::Pod { pod: p, .. }, Some(name)) => p.name == name,
        (Seen::PodGone { name, .. }, Some(pod)) => name == pod,
        (Seen::Event(e), Some(pod)) => e.regarding == pod || e.related.as_deref() == Some(pod),
        (Seen::Lease(_), Some(_)) => violation.check == Check::StandbyWrite,
        (Seen::Kvs(_) | Seen::OperatorKilled, _) => true,
        (_, None) => !matches!(r.seen, Seen::Event(_) | Seen::Lease(_)),
    };
    let until = violation.at + SignedDuration::from_secs(5);
    let from = violation.from.unwrap_or(Timestamp::MIN);
    // The fleet as it stood when the evidence starts, then what changed.
    let mut standing: BTreeMap<String, &Record> = BTreeMap::new();
    for record in history.iter().take_while(|r| r.at < from) {
        match &record.seen {
            Seen::Pod { pod, .. } => {
                standing.insert(pod.uid.clone(), record);
            }
            Seen::PodGone { uid, .. } => {
                standing.remove(uid);
            }
            _ => {}
        }
    }
    let standing = standing
        .values()
        .filter(|r| {
            pod.is_none()
                || matches!(&r.seen, Seen::Pod { pod: p, .. } if Some(p.name.as_str()) == pod)
        })
        .map(|r| format!("(as of {}) {}", offset(start, from), render(start, r)));
    let lines: Vec<String> = standing
        .chain(
            history
                .iter()
                .filter(|r| relevant(r))
                .filter(|r| r.at >= from)
                .filter(|r| r.at <= if pod.is_some() { until } else { violation.at })
                .map(|r| render(start, r)),
        )
        .collect();
    let keep = 40;
    if lines.len() > keep {
        let mut tail = vec![format!("… {} earlier records", lines.len() - keep)];
        tail.extend(lines[lines.len() - keep..].iter().cloned());
        tail
    } else {
        lines
    }
}

/// Reads a pod as the checks see it.
pub fn pod_seen(pod: &Pod) -> PodSeen {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let mark = |key: &str| labels.get(key).or_else(|| annotations.get(key)).cloned();
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    PodSeen {
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        ready: running && ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        traffic: mark(kubervisor_api::pod::TRAFFIC_LABEL),
        strategy: mark(kubervisor_api::pod::STRATEGY_LABEL),
        owner: labels.get(kubervisor_api::pod::NAME_LABEL).cloned(),
        break_at: annotations
            .get(kubervisor_api::pod::BREAK_AT_ANNOTATION)
            .cloned(),
        retry_count: annotations
            .get(kubervisor_api::pod::RETRY_COUNT_ANNOTATION)
            .and_then(|c| c.parse().ok()),
    }
}

fn kvs_seen(kvs: &KubervisorService) -> KvsSeen {
    KvsSeen {
        deleting: kvs.metadata.deletion_timestamp.is_some(),
        spec: kvs.spec.resolve().ok(),
    }
}

fn event_seen(event: &Event) -> EventSeen {
    let name_of = |r: &Option<k8s_openapi::api::core::v1::ObjectReference>| {
        r.as_ref().and_then(|r| r.name.clone())
    };
    EventSeen {
        name: event.metadata.name.clone().unwrap_or_default(),
        reason: event.reason.clone().unwrap_or_default(),
        regarding_kind: event
            .regarding
            .as_ref()
            .and_then(|r| r.kind.clone())
            .unwrap_or_default(),
        regarding: name_of(&event.regarding).unwrap_or_default(),
        related: name_of(&event.related),
        instance: event.reporting_instance.clone().unwrap_or_default(),
        time: event.event_time.as_ref().map(|t| t.0),
    }
}

fn lease_seen(lease: &Lease) -> LeaseSeen {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseSeen {
        holder: spec.holder_identity.filter(|h| !h.is_empty()),
        acquired: spec.acquire_time.map(|t| t.0),
        renewed: spec.renew_time.map(|t| t.0),
        duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
    }
}

/// Each check on synthetic histories: one that violates it and must be reported, one that
/// must not.
#[cfg(test)]
mod checks {
    use super::*;
    use serde_json::json;

    const START: i64 = 1_800_000_000;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(START * 1000 + ms).unwrap()
    }

    fn config(lease: bool) -> MonitorConfig {
        MonitorConfig {
            lease: lease.then(|| "kubervisor".to_string()),
            ..MonitorConfig::web("default")
        }
    }

    fn kvs(min_count: u32, activator: serde_json::Value) -> Seen {
        let spec: kubervisor_api::KubervisorServiceSpec = serde_json::from_value(json!({
            "service": "web",
            "breakers": [{"name": "faulty", "minPodsAvailableCount": min_count,
                          "customService": "http://127.0.0.1:1/faulty"}],
            "defaultActivator": activator,
        }))
        .unwrap();
        Seen::Kvs(Some(KvsSeen {
            deleting: false,
            spec: Some(spec.resolve().unwrap()),
        }))
    }

    /// A ready pod `name` (uid `name`) of `web`; ejected at `break_at` ms when given.
    fn pod(name: &str, traffic: &str, ejected: Option<(i64, u32)>) -> PodSeen {
        PodSeen {
            name: name.into(),
            uid: name.into(),
            ready: true,
            terminating: false,
            traffic: Some(traffic.into()),
            strategy: ejected.map(|_| "faulty".into()),
            owner: Some("web".into()),
            break_at: ejected.map(|(at, _)| t(at).to_string()),
            retry_count: ejected.map(|(_, n)| n),
        }
    }

    fn event(reason: &str, regarding: &str, by: &str) -> Vec<Seen> {
        let on = |kind: &str, name: &str, related: Option<&str>| {
            Seen::Event(EventSeen {
                name: format!("{name}.{reason}"),
                reason: reason.into(),
                regarding_kind: kind.into(),
                regarding: name.into(),
                related: related.map(str::to_string),
                instance: by.into(),
                time: None,
            })
        };
        vec![
            on("KubervisorService", "web", Some(regarding)),
            on("Pod", regarding, Some("web")),
        ]
    }

    struct History(Vec<Record>);

    impl History {
        /// Three ready pods serving, `web` with floor `min_count` and `activator`.
        fn fleet(min_count: u32, activator: serde_json::Value) -> History {
            let mut h = History(Vec::new());
            h.at(0, kvs(min_count, activator));
            for name in ["p0", "p1", "p2"] {
                h.at(
                    0,
                    Seen::Pod {
                        pod: pod(name, "yes", None),
                        initial: true,
                    },
                );
            }
            h
        }

        fn at(&mut self, ms: i64, seen: Seen) -> &mut Self {
            self.0.push(Record { at: t(ms), seen });
            self
        }

        fn pod(&mut self, ms: i64, pod: PodSeen) -> &mut Self {
            self.at(
                ms,
                Seen::Pod {
                    pod,
                    initial: false,
                },
            )
        }

        fn events(&mut self, ms: i64, seen: Vec<Seen>) -> &mut Self {
            for s in seen {
                self.at(ms, s);
            }
            self
        }

        /// `name` ejected at `ms` (retry `n`) with its events.
        fn eject(&mut self, ms: i64, name: &str, n: u32) -> &mut Self {
            self.pod(ms, pod(name, "no", Some((ms, n))))
                .events(ms + 50, event("PodEjected", name, "a"))
        }

        fn reactivate(&mut self, ms: i64, name: &str, ejected: (i64, u32)) -> &mut Self {
            self.pod(ms, pod(name, "yes", Some(ejected)))
                .events(ms + 50, event("PodActivated", name, "a"))
        }

        fn judge(&self, lease: bool, now_ms: i64) -> Vec<Violation> {
            let found = check(&self.0, &config(lease), t(0), t(now_ms), true);
            for v in &found {
                eprintln!("{}", v.render(t(0)));
            }
            found
        }
    }

    fn checks(found: &[Violation]) -> Vec<Check> {
        found.iter().map(|v| v.check).collect()
    }

    fn periodic(secs: f64) -> serde_json::Value {
        json!({"mode": "periodic", "period": secs})
    }

    #[test]
    fn an_ejection_below_the_floor_is_reported_at_once() {
        let mut h = History::fleet(2, periodic(60.0));
        h.eject(10_000, "p0", 1).eject(10_500, "p1", 1);
        let found = h.judge(false, 11_000);
        assert_eq!(checks(&found), [Check::Floor], "{found:?}");
        assert!(
            found[0]
                .history
                .iter()
                .any(|l| l.contains("pod p1") && l.contains("traffic=no"))
        );
    }

    #[test]
    fn ejections_down_to_the_floor_are_clean() {
        let mut h = History::fleet(2, periodic(60.0));
        h.eject(10_000, "p0", 1);
        assert!(h.judge(false, 20_000).is_empty());
    }

    #[test]
    fn outside_losses_must_be_made_good_within_the_restore_window() {
        let mut late = History::fleet(2, periodic(60.0));
        late.eject(10_000, "p0", 1);
        let mut unready = pod("p1", "yes", None);
        unready.ready = false;
        late.pod(12_000, unready.clone());
        let mut made_good = History(late.0.clone());
        // Given back 4 s after the loss: too late.
        late.pod(16_000, pod("p0", "yes", Some((10_000, 1))))
            .events(16_050, event("FloorRestored", "p0", "a"));
        assert_eq!(checks(&late.judge(false, 20_000)), [Check::Floor]);
        // Given back 1 s after the loss.
        made_good
            .pod(13_000, pod("p0", "yes", Some((10_000, 1))))
            .events(13_050, event("FloorRestored", "p0", "a"));
        assert!(made_good.judge(false, 20_000).is_empty());
    }

    #[test]
    fn a_second_ejection_without_reactivation_is_reported() {
        let mut h = History::fleet(1, periodic(60.0));
        h.eject(10_000, "p0", 1).eject(11_000, "p0", 2);
        let found = h.judge(false, 12_000);
        assert_eq!(checks(&found), [Check::EjectedTwice], "{found:?}");
        let mut h = History::fleet(1, periodic(60.0));
        h.eject(10_000, "p0", 1).eject(11_000, "p0", 3);
        let found = h.judge(false, 12_000);
        assert!(checks(&found).iter().all(|c| *c == Check::EjectedTwice));
        assert!(found.iter().any(|v| v.message.contains("from 1 to 3")));
    }

    #[test]
    fn ejected_reactivated_ejected_again_is_clean() {
        let mut h = History::fleet(1, periodic(1.0));
        h.eject(10_000, "p0", 1)
            .reactivate(11_200, "p0", (10_000, 1))
            .eject(12_000, "p0", 2)
            .reactivate(13_100, "p0", (12_000, 2));
        assert!(h.judge(false, 20_000).is_empty());
    }

    #[test]
    fn a_pod_kept_out_past_its_period_and_slack_is_reported() {
        let mut h = History::fleet(1, periodic(5.0));
        h.eject(10_000, "p0", 1);
        let found = h.judge(false, 17_500);
        assert_eq!(checks(&found), [Check::ActivationLate], "{found:?}");
        h.reactivate(17_400, "p0", (10_000, 1));
        assert_eq!(checks(&h.judge(false, 20_000)), [Check::ActivationLate]);
    }

    #[test]
    fn activations_within_period_and_slack_are_clean() {
        let mut h = History::fleet(1, periodic(5.0));
        h.eject(10_000, "p0", 1)
            .reactivate(16_500, "p0", (10_000, 1));
        assert!(h.judge(false, 30_000).is_empty());
        // Retries exhausted: killed at once, with its event.
        let kill = json!({"mode": "retryAndKill", "period": 5.0, "maxRetryCount": 0});
        let mut h = History::fleet(1, kill);
        h.eject(10_000, "p0", 1)
            .at(
                10_300,
                Seen::PodGone {
                    name: "p0".into(),
                    uid: "p0".into(),
                },
            )
            .events(10_350, event("PodKilled", "p0", "a"));
        assert!(h.judge(false, 30_000).is_empty());
    }

    #[test]
    fn an_ejection_time_written_ahead_does_not_buy_its_pod_more_time_out() {
        let mut h = History::fleet(1, periodic(5.0));
        // Written by a clock an hour ahead, seen at 10 s: due at 15 s all the same.
        h.pod(10_000, pod("p0", "no", Some((3_610_000, 1))))
            .events(10_050, event("PodEjected", "p0", "a"));
        let found = h.judge(false, 17_500);
        assert_eq!(checks(&found), [Check::ActivationLate], "{found:?}");
        // Given back at once: its time out cannot be measured, so it is not early.
        h.reactivate(10_500, "p0", (3_610_000, 1));
        assert!(h.judge(false, 20_000).is_empty());
    }

    #[test]
    fn a_reactivation_before_its_time_is_reported_unless_the_floor_restored_it() {
        let mut early = History::fleet(1, periodic(5.0));
        early.eject(10_000, "p0", 1);
        let mut restored = History(early.0.clone());
        early.reactivate(13_500, "p0", (10_000, 1));
        let found = early.judge(false, 20_000);
        assert_eq!(checks(&found), [Check::ActivationEarly], "{found:?}");
        // Within the slack, as a clock catching up with a step may make it.
        let mut close = History::fleet(1, periodic(5.0));
        close
            .eject(10_000, "p0", 1)
            .reactivate(14_500, "p0", (10_000, 1));
        assert!(close.judge(false, 20_000).is_empty());
        restored
            .pod(13_500, pod("p0", "yes", Some((10_000, 1))))
            .events(13_550, event("FloorRestored", "p0", "a"));
        assert!(restored.judge(false, 20_000).is_empty());
    }

    fn lease(holder: &str, acquired_ms: i64, renewed_ms: i64) -> Seen {
        Seen::Lease(LeaseSeen {
            holder: Some(holder.into()),
            acquired: Some(t(acquired_ms)),
            renewed: Some(t(renewed_ms)),
            duration: Duration::from_secs(15),
        })
    }

    fn leader_handover(acting: &str) -> History {
        let mut h = History::fleet(1, periodic(60.0));
        h.at(1_000, lease("a", 1_000, 1_000))
            .at(3_000, lease("a", 1_000, 3_000))
            .at(20_000, lease("b", 20_000, 20_000))
            .pod(25_000, pod("p0", "no", Some((25_000, 1))))
            .events(25_050, event("PodEjected", "p0", acting));
        h
    }

    #[test]
    fn a_decision_by_the_replica_that_lost_the_lease_is_reported() {
        let found = leader_handover("a").judge(true, 30_000);
        assert_eq!(checks(&found), [Check::StandbyWrite], "{found:?}");
        assert!(found[0].message.contains("held by b"), "{found:?}");
        assert!(
            found[0]
                .history
                .iter()
                .any(|l| l.contains("lease holder=b"))
        );
        // Still the holder, but past its lease: it should have stepped down.
        let mut h = History::fleet(1, periodic(60.0));
        h.at(1_000, lease("a", 1_000, 1_000))
            .pod(18_000, pod("p0", "no", Some((18_000, 1))))
            .events(18_050, event("PodEjected", "p0", "a"));
        assert_eq!(checks(&h.judge(true, 20_000)), [Check::StandbyWrite]);
    }

    #[test]
    fn decisions_by_the_lease_holder_are_clean() {
        assert!(leader_handover("b").judge(true, 30_000).is_empty());
    }

    #[test]
    fn a_decision_without_its_event_or_with_two_is_reported() {
        let mut h = History::fleet(1, periodic(60.0));
        h.pod(10_000, pod("p0", "no", Some((10_000, 1))));
        let found = h.judge(false, 12_000);
        assert_eq!(
            checks(&found),
            [Check::EventPerDecision, Check::EventPerDecision],
            "missing on the pod and on the resource: {found:?}"
        );
        let mut h = History::fleet(1, periodic(60.0));
        h.eject(10_000, "p0", 1)
            .events(10_100, vec![event("PodEjected", "p0", "a").remove(1)]);
        let found = h.judge(false, 12_000);
        assert_eq!(checks(&found), [Check::EventPerDecision], "{found:?}");
        assert!(found[0].message.contains("2 PodEjected event(s) on pod p0"));
        // An event for a decision nobody saw.
        let mut h = History::fleet(1, periodic(60.0));
        h.events(10_000, event("PodActivated", "p1", "a"));
        assert_eq!(
            checks(&h.judge(false, 12_000)),
            [Check::EventPerDecision, Check::EventPerDecision]
        );
    }

    #[test]
    fn an_event_lost_with_a_killed_operator_is_excused_only_right_after_its_write() {
        let mut h = History::fleet(1, periodic(60.0));
        h.pod(10_000, pod("p0", "no", Some((10_000, 1))));
        h.at(10_200, Seen::OperatorKilled);
        assert!(h.judge(false, 20_000).is_empty());
        let mut h = History::fleet(1, periodic(60.0));
        h.pod(10_000, pod("p0", "no", Some((10_000, 1))));
        h.at(15_000, Seen::OperatorKilled);
        assert_eq!(h.judge(false, 20_000).len(), 2);
    }

    #[test]
    fn events_not_yet_published_are_not_judged_while_running() {
        let mut h = History::fleet(1, periodic(60.0));
        h.pod(10_000, pod("p0", "no", Some((10_000, 1))));
        assert!(check(&h.0, &config(false), t(0), t(11_000), false).is_empty());
        assert_eq!(check(&h.0, &config(false), t(0), t(14_000), false).len(), 2);
    }

    #[test]
    fn a_reactivation_during_the_grace_period_is_a_decision_with_its_events() {
        // Ejected, then deleted by a rolling update while out; the operator's
        // re-activation, decided just before, lands on the terminating pod.
        let terminating = |traffic: &str| PodSeen {
            terminating: true,
            ..pod("p0", traffic, Some((10_000, 1)))
        };
        let mut h = History::fleet(1, periodic(4.0));
        h.eject(10_000, "p0", 1)
            .pod(13_900, terminating("no"))
            .pod(13_930, terminating("yes"))
            .events(13_950, event("PodActivated", "p0", "a"))
            .at(
                14_000,
                Seen::PodGone {
                    uid: "p0".into(),
                    name: "p0".into(),
                },
            );
        assert!(h.judge(false, 20_000).is_empty());
        // The same without its events is still reported.
        let mut h = History::fleet(1, periodic(4.0));
        h.eject(10_000, "p0", 1)
            .pod(13_900, terminating("no"))
            .pod(13_930, terminating("yes"));
        assert_eq!(
            checks(&h.judge(false, 20_000)),
            [Check::EventPerDecision, Check::EventPerDecision]
        );
    }

    #[test]
    fn an_ejection_of_a_pod_already_terminating_is_not_followed_by_a_kill() {
        // A retryAndKill pod past its retries: the operator's ejection, decided on a view
        // from just before a rolling update began deleting the pod, lands after it.
        let kill = json!({"mode": "retryAndKill", "period": 4.0, "maxRetryCount": 1});
        let mut h = History::fleet(1, kill.clone());
        h.pod(
            10_000,
            PodSeen {
                terminating: true,
                ..pod("p0", "yes", None)
            },
        )
        .pod(
            10_040,
            PodSeen {
                terminating: true,
                ..pod("p0", "no", Some((10_040, 2)))
            },
        )
        .events(10_090, event("PodEjected", "p0", "a"))
        .at(
            10_100,
            Seen::PodGone {
                uid: "p0".into(),
                name: "p0".into(),
            },
        );
        assert!(h.judge(false, 20_000).is_empty());
        // Ejected while serving, then deleted: that is the activator's kill, and its
        // events are required.
        let mut h = History::fleet(1, kill);
        h.eject(10_000, "p0", 2).at(
            10_100,
            Seen::PodGone {
                uid: "p0".into(),
                name: "p0".into(),
            },
        );
        assert_eq!(
            checks(&h.judge(false, 20_000)),
            [Check::EventPerDecision, Check::EventPerDecision]
        );
    }

    #[test]
    fn an_ejection_and_reactivation_both_missed_still_count() {
        // The monitor missed the `no` version: breakAt changed on a serving pod.
        let mut h = History::fleet(1, periodic(1.0));
        h.pod(11_000, pod("p0", "yes", Some((10_000, 1))))
            .events(11_050, event("PodEjected", "p0", "a"))
            .events(11_060, event("PodActivated", "p0", "a"));
        assert!(h.judge(false, 20_000).is_empty());
    }
}
