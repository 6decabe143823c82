//! Step tests: the scenarios of the end-to-end suite, decided without a runtime or an API
//! server. A small fleet applies the writes the step asks for, as the API server would,
//! and feeds them back as outcomes and observations.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use kubervisor_api::pod::{BREAK_AT_ANNOTATION, RETRY_COUNT_ANNOTATION, STRATEGY_LABEL};
use kubervisor_core::detect::{self, Findings};
use serde_json::json;

use super::*;
use crate::labels::Labels;
use crate::source::Request;

const NS: &str = "shop";

fn t0() -> Timestamp {
    "2026-11-25T10:00:00Z".parse().unwrap()
}

/// A pod of the Service `web` (label `app=web`), Running and Ready.
fn pod(name: &str) -> SlimPod {
    SlimPod {
        namespace: NS.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        resource_version: "1".into(),
        labels: [("app", "web")].into_iter().collect(),
        annotations: Labels::default(),
        has_annotations: false,
        running: true,
        ready: true,
        terminating: false,
        containers_ready: true,
        traffic_gate: false,
        traffic_condition: None,
    }
}

/// The cluster as the step's writes leave it.
struct Fleet {
    kvs: Option<KvsEntry>,
    service: Option<SlimService>,
    pods: BTreeMap<String, SlimPod>,
    version: u64,
    /// The next writes on these pods fail their precondition, as after a concurrent change.
    conflicts: BTreeMap<String, usize>,
    /// A PodDisruptionBudget that refuses every eviction while set.
    budget_exhausted: bool,
    /// Evictions asked for, refused or not.
    evictions: usize,
}

/// The step, a fleet, a clock, and everything the step asked for so far.
struct Harness {
    state: Option<State>,
    fleet: Fleet,
    now: Timestamp,
    effects: Vec<Effect>,
}

fn resource(spec: serde_json::Value) -> KubervisorService {
    serde_json::from_value(json!({
        "apiVersion": "kubervisor.k8s.io/v1alpha1",
        "kind": "KubervisorService",
        "metadata": {"name": "web", "namespace": NS, "resourceVersion": "10", "generation": 1,
                     "finalizers": [FINALIZER], "uid": "kvs-uid"},
        "spec": spec,
    }))
    .unwrap()
}

fn custom(min_count: u32, min_ratio: u32, activator: serde_json::Value) -> serde_json::Value {
    json!({
        "service": "web",
        "breakers": [{"name": "faulty", "evaluationPeriod": 1, "minPodsAvailableCount": min_count,
                      "minPodsAvailableRatio": min_ratio, "customService": "detector:8080"}],
        "defaultActivator": activator,
    })
}

impl Harness {
    fn new(spec: serde_json::Value, pods: usize) -> Harness {
        Harness::with(resource(spec), pods)
    }

    fn with(kvs: KubervisorService, pods: usize) -> Harness {
        let fleet = Fleet {
            kvs: Some(KvsEntry {
                object: Arc::new(kvs),
                decode_error: None,
            }),
            service: Some(SlimService {
                namespace: NS.into(),
                name: "web".into(),
                selector: Some(
                    [("app", "web"), (TRAFFIC_LABEL, "yes")]
                        .into_iter()
                        .collect(),
                ),
            }),
            pods: (0..pods)
                .map(|i| (format!("p{i}"), pod(&format!("p{i}"))))
                .collect(),
            version: 100,
            conflicts: BTreeMap::new(),
            budget_exhausted: false,
            evictions: 0,
        };
        Harness {
            state: Some(State::new(NS, "web")),
            fleet,
            now: t0(),
            effects: Vec::new(),
        }
    }

    /// A running resource whose pods are all adopted.
    fn running(spec: serde_json::Value, pods: usize) -> Harness {
        let mut h = Harness::new(spec, pods);
        h.observe();
        assert!(matches!(h.state().phase(), Phase::Running { .. }));
        h.effects.clear();
        h
    }

    fn state(&self) -> &State {
        self.state.as_ref().unwrap()
    }

    fn observed(&self) -> Observed {
        let Some(kvs) = self.fleet.kvs.clone() else {
            return Observed::default();
        };
        let selector = self
            .fleet
            .service
            .as_ref()
            .and_then(|s| s.managed_selector());
        let pods = |keep: &dyn Fn(&SlimPod) -> bool| -> Vec<Arc<SlimPod>> {
            self.fleet
                .pods
                .values()
                .filter(|p| keep(p))
                .cloned()
                .map(Arc::new)
                .collect()
        };
        Observed {
            managed: match &selector {
                Some(sel) => pods(&|p| sel.iter().all(|(k, v)| p.labels.get(k) == Some(v))),
                None => Vec::new(),
            },
            labelled: pods(&|p| p.labels.get(NAME_LABEL) == Some("web")),
            service: self.fleet.service.clone().map(Arc::new),
            kvs: Some(kvs),
        }
    }

    /// Feeds one input, carries out the writes it asks for and feeds their outcomes back.
    fn feed(&mut self, input: Input) -> Vec<Effect> {
        let mut all = Vec::new();
        let mut inputs = std::collections::VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let (state, effects) = plan(self.state.take().unwrap(), input, self.now);
            self.state = Some(state);
            for effect in &effects {
                match effect {
                    Effect::Pod(write) => inputs.push_back(Input::Written {
                        pod: write.pod.name.to_string(),
                        outcome: self.fleet.apply(write),
                    }),
                    Effect::RemoveFinalizer(_) => self.fleet.kvs = None,
                    _ => {}
                }
            }
            all.extend(effects);
        }
        self.effects.extend(all.clone());
        all
    }

    /// The watch shows the fleet as it is now.
    fn observe(&mut self) -> Vec<Effect> {
        let observed = self.observed();
        self.feed(Input::Observed(observed))
    }

    fn findings(&mut self, breaker: &str, result: Result<Findings, SourceError>) -> Vec<Effect> {
        self.feed(Input::Findings {
            breaker: breaker.into(),
            result,
        })
    }

    fn report(&mut self, anomalous: &[&str]) -> Vec<Effect> {
        let names: Vec<String> = anomalous.iter().map(|s| s.to_string()).collect();
        self.findings("faulty", Ok(detect::custom(&names)))
    }

    /// Moves the clock and runs the activator if it is due by then.
    fn at(&mut self, secs: i64) -> Vec<Effect> {
        self.now = t0() + SignedDuration::from_secs(secs);
        match self.state().activator_due() {
            Some(due) if due <= self.now => self.feed(Input::ActivatorDue),
            _ => Vec::new(),
        }
    }

    fn traffic(&self) -> BTreeMap<&str, &str> {
        self.fleet
            .pods
            .values()
            .map(|p| (&*p.name, p.labels.get(TRAFFIC_LABEL).unwrap_or("-")))
            .collect()
    }

    fn with_traffic(&self, value: &str) -> Vec<&str> {
        self.traffic()
            .into_iter()
            .filter(|(_, t)| *t == value)
            .map(|(p, _)| p)
            .collect()
    }
}

impl Fleet {
    /// Applies a write as the API server would, preconditions included.
    fn apply(&mut self, write: &PodWrite) -> Written {
        let name: &str = &write.pod.name;
        if let Some(n) = self.conflicts.get_mut(name).filter(|n| **n > 0) {
            // Someone else wrote the pod: the API server holds a newer version, which the
            // watch shows on the next observation.
            *n -= 1;
            self.version += 1;
            let version = self.version.to_string();
            if let Some(pod) = self.pods.get_mut(name) {
                pod.resource_version = version;
            }
            return Written::Stale(format!("pod {name} changed since it was read"));
        }
        let Some(current) = self.pods.get(name) else {
            return Written::Stale(format!("pod {name} is gone"));
        };
        if current.resource_version != write.pod.resource_version {
            return Written::Stale(format!("pod {name} changed since it was read"));
        }
        let mut pod = current.clone();
        // The traffic state and the breaker, where this mode keeps them.
        fn state(pod: &mut SlimPod, marks_in: MarksIn) -> &mut Labels {
            match marks_in {
                MarksIn::Labels => &mut pod.labels,
                MarksIn::Annotations => &mut pod.annotations,
            }
        }
        let marks_in = write.marks_in;
        match &write.change {
            PodChange::Adopt => {
                state(&mut pod, marks_in).insert_if_absent(TRAFFIC_LABEL, "yes");
                pod.labels.insert(NAME_LABEL, "web");
            }
            PodChange::Release => {
                if pod.traffic_gate {
                    pod.traffic_condition = Some(true);
                } else {
                    pod.labels.insert(TRAFFIC_LABEL, "yes");
                }
                pod.labels.remove(NAME_LABEL);
                pod.labels.remove(STRATEGY_LABEL);
                pod.annotations.clear();
            }
            PodChange::Eject {
                breaker,
                retry_count,
                at,
            } => {
                assert_eq!(state(&mut pod, marks_in).get(TRAFFIC_LABEL), Some("yes"));
                state(&mut pod, marks_in).insert(TRAFFIC_LABEL, "no");
                state(&mut pod, marks_in).insert(STRATEGY_LABEL, breaker.clone());
                pod.annotations.insert(BREAK_AT_ANNOTATION, at.to_string());
                pod.annotations
                    .insert(RETRY_COUNT_ANNOTATION, retry_count.to_string());
                pod.has_annotations = true;
            }
            PodChange::Reinstate { to } => {
                assert_eq!(state(&mut pod, marks_in).get(TRAFFIC_LABEL), Some("no"));
                state(&mut pod, marks_in).insert(TRAFFIC_LABEL, to.as_str());
            }
            PodChange::ForgetRetries => {
                assert_eq!(state(&mut pod, marks_in).get(TRAFFIC_LABEL), Some("yes"));
                pod.annotations.insert(RETRY_COUNT_ANNOTATION, "0");
            }
            PodChange::SetGate(serve) => {
                assert!(
                    pod.traffic_gate,
                    "the gate is only set on pods that declare it"
                );
                pod.traffic_condition = Some(*serve);
            }
            PodChange::Kill(method) => {
                if *method == KillMethod::Evict {
                    self.evictions += 1;
                    if self.budget_exhausted {
                        return Written::Blocked(format!(
                            "eviction of pod {name} refused: Cannot evict pod as it would violate the pod's disruption budget."
                        ));
                    }
                }
                self.pods.remove(name);
                return Written::Done(None);
            }
        }
        // As the kubelet does: Ready needs the containers and every readiness gate.
        pod.ready =
            pod.containers_ready && (!pod.traffic_gate || pod.traffic_condition == Some(true));
        self.version += 1;
        pod.resource_version = self.version.to_string();
        self.pods.insert(name.to_string(), pod.clone());
        Written::Done(Some(pod))
    }
}

fn pod_writes(effects: &[Effect]) -> Vec<(&str, &PodChange)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Pod(w) => Some((&*w.pod.name, &w.change)),
            _ => None,
        })
        .collect()
}

/// The events published, as (reason, pod, note).
fn events(effects: &[Effect]) -> Vec<(&'static str, Option<String>, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish(r) => Some((
                r.note.reason(),
                r.pod.as_ref().map(|p| p.name.to_string()),
                r.note.to_string(),
            )),
            _ => None,
        })
        .collect()
}

fn reasons(effects: &[Effect]) -> Vec<&'static str> {
    events(effects).into_iter().map(|(r, _, _)| r).collect()
}

/// The statuses written, in order.
fn statuses(effects: &[Effect]) -> Vec<&KubervisorServiceStatus> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Status(s) => Some(&**s),
            _ => None,
        })
        .collect()
}

fn last_status(effects: &[Effect]) -> Option<&KubervisorServiceStatus> {
    statuses(effects).pop()
}

/// Two custom-detector breakers evaluated every 5 s.
fn two_custom_breakers() -> serde_json::Value {
    json!({
        "service": "web",
        "breakers": [
            {"name": "breaker-1", "evaluationPeriod": 5, "customService": "d:80/1"},
            {"name": "breaker-2", "evaluationPeriod": 5, "customService": "d:80/2"},
        ],
    })
}

fn ready_reason(effects: &[Effect]) -> Option<(String, String)> {
    let status = last_status(effects)?;
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((ready.reason.clone()?, ready.message.clone()?))
}

fn source_error() -> SourceError {
    SourceError::Unreachable {
        request: Request::Prometheus {
            base: "http://prometheus:9090".into(),
            promql: "up".into(),
        },
        reason: "connection refused".into(),
    }
}

// --- adoption, status, the resource's own life

#[test]
fn new_pods_are_adopted_and_the_status_counts_them() {
    let mut h = Harness::new(custom(1, 0, json!(null)), 3);
    let effects = h.observe();
    assert_eq!(
        pod_writes(&effects),
        [
            ("p0", &PodChange::Adopt),
            ("p1", &PodChange::Adopt),
            ("p2", &PodChange::Adopt)
        ]
    );
    assert_eq!(h.with_traffic("yes"), ["p0", "p1", "p2"]);
    let status = last_status(&effects).expect("a status is written");
    let counts = status.pod_count.as_ref().unwrap();
    assert_eq!(counts.nb_pods_managed, 3);
    assert_eq!(ready_reason(&effects).unwrap().0, "Running");
    assert_eq!(status.observed_generation, Some(1));
    // Observing the same fleet again writes nothing: no pod, no status.
    h.fleet.kvs.as_mut().unwrap().object = Arc::new({
        let mut kvs = (*h.fleet.kvs.as_ref().unwrap().object).clone();
        kvs.status = Some(status.clone());
        kvs
    });
    let again = h.observe();
    assert!(pod_writes(&again).is_empty());
    assert!(last_status(&again).is_none(), "{again:?}");
}

#[test]
fn a_new_version_with_the_same_spec_shares_the_resolved_spec() {
    let mut h = Harness::new(custom(1, 0, json!(null)), 2);
    h.observe();
    let first = h.state().running_spec().cloned().expect("running");
    let replace = |h: &mut Harness, change: &dyn Fn(&mut KubervisorService)| {
        let mut kvs = (*h.fleet.kvs.as_ref().unwrap().object).clone();
        change(&mut kvs);
        h.fleet.kvs.as_mut().unwrap().object = Arc::new(kvs);
        h.observe();
    };
    // A status write brings a new version of the object, with the same spec.
    replace(&mut h, &|kvs| {
        kvs.metadata.resource_version = Some("7".into());
        kvs.status = Some(Default::default());
    });
    let after_status = h.state().running_spec().cloned().expect("running");
    assert!(
        Arc::ptr_eq(&first, &after_status),
        "one resolved spec per resource, not one per version of the object"
    );
    assert!(Arc::ptr_eq(
        h.state().resource().unwrap(),
        &h.fleet.kvs.as_ref().unwrap().object
    ));
    // A spec change is resolved again.
    replace(&mut h, &|kvs| {
        kvs.spec.breakers[0].evaluation_period = Some(3.0)
    });
    let changed = h.state().running_spec().cloned().expect("running");
    assert!(!Arc::ptr_eq(&first, &changed));
    assert_eq!(
        changed.breakers[0].evaluation_period,
        std::time::Duration::from_secs(3)
    );
}

#[test]
fn the_finalizer_is_added_once_per_version() {
    let mut kvs = resource(custom(1, 0, json!(null)));
    kvs.metadata.finalizers = None;
    let mut h = Harness::with(kvs, 1);
    let first = h.observe();
    assert!(matches!(first[0], Effect::AddFinalizer(_)));
    let second = h.observe();
    assert!(!second.iter().any(|e| matches!(e, Effect::AddFinalizer(_))));
}

#[test]
fn an_invalid_spec_stops_the_resource_and_is_reported_once() {
    let mut h = Harness::new(json!({"service": "web", "breakers": []}), 2);
    let effects = h.observe();
    assert_eq!(*h.state().phase(), Phase::Stopped(StopReason::InvalidSpec));
    assert!(pod_writes(&effects).is_empty(), "nothing is adopted");
    assert_eq!(reasons(&effects), ["InvalidSpec"]);
    let (reason, message) = ready_reason(&effects).unwrap();
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("spec.breakers"), "{message}");
    assert!(
        reasons(&h.observe()).is_empty(),
        "reported once while it holds"
    );
}

#[test]
fn an_unreadable_spec_is_an_invalid_spec_with_its_path() {
    let mut h = Harness::new(custom(1, 0, json!(null)), 1);
    h.fleet.kvs.as_mut().unwrap().decode_error =
        Some("spec.breakers[0].evaluationPeriod: invalid type: string \"x\"".into());
    let effects = h.observe();
    let (reason, message) = ready_reason(&effects).unwrap();
    assert_eq!(reason, "InvalidSpec");
    assert!(message.starts_with("spec.breakers[0].evaluationPeriod"));
}

#[test]
fn a_missing_service_stops_the_resource_until_it_appears() {
    let mut h = Harness::new(custom(1, 0, json!(null)), 2);
    h.fleet.service = None;
    let effects = h.observe();
    assert_eq!(
        *h.state().phase(),
        Phase::Stopped(StopReason::ServiceNotFound)
    );
    assert_eq!(
        events(&effects)[0].2,
        "Service shop/web not found",
        "the message names the Service"
    );
    h.fleet.service = Some(SlimService {
        namespace: NS.into(),
        name: "web".into(),
        selector: Some([("app", "web")].into_iter().collect()),
    });
    let effects = h.observe();
    assert!(matches!(h.state().phase(), Phase::Running { .. }));
    assert_eq!(pod_writes(&effects).len(), 2);
}

#[test]
fn a_service_selecting_only_on_traffic_cannot_be_guarded() {
    let mut h = Harness::new(custom(1, 0, json!(null)), 2);
    h.fleet.service.as_mut().unwrap().selector =
        Some([(TRAFFIC_LABEL, "yes")].into_iter().collect());
    let effects = h.observe();
    assert_eq!(
        *h.state().phase(),
        Phase::Stopped(StopReason::ServiceHasNoSelector)
    );
    assert_eq!(reasons(&effects), ["ServiceHasNoSelector"]);
}

#[test]
fn a_pod_leaving_the_selector_gets_its_traffic_back() {
    let mut h = Harness::running(custom(1, 0, json!(null)), 3);
    h.fleet
        .pods
        .get_mut("p1")
        .unwrap()
        .labels
        .insert("app", "other");
    let effects = h.observe();
    assert_eq!(pod_writes(&effects), [("p1", &PodChange::Release)]);
    assert!(!h.fleet.pods["p1"].labels.contains_key(NAME_LABEL));
}

#[test]
fn deleting_the_resource_hands_every_pod_back_then_removes_the_finalizer() {
    let mut h = Harness::running(custom(1, 0, json!({"mode": "periodic", "period": 60})), 4);
    h.report(&["p0", "p1"]);
    assert_eq!(h.with_traffic("no"), ["p0", "p1"]);
    h.observe();
    let mut kvs = (*h.fleet.kvs.as_ref().unwrap().object).clone();
    kvs.metadata.deletion_timestamp = Some(Time(t0()));
    kvs.metadata.resource_version = Some("11".into());
    h.fleet.kvs.as_mut().unwrap().object = Arc::new(kvs);
    let effects = h.observe();
    assert_eq!(*h.state().phase(), Phase::Deleting);
    assert_eq!(pod_writes(&effects).len(), 4, "every pod is released");
    assert!(
        matches!(effects.last(), Some(Effect::RemoveFinalizer(_))),
        "the finalizer goes once the last release came back: {effects:?}"
    );
    assert_eq!(h.with_traffic("yes"), ["p0", "p1", "p2", "p3"]);
    assert!(h.fleet.pods.values().all(|p| p.annotations.is_empty()));
    h.observe();
    assert_eq!(*h.state().phase(), Phase::Finished);
}

#[test]
fn the_finalizer_stays_while_a_release_does_not_apply() {
    let mut h = Harness::running(custom(1, 0, json!(null)), 2);
    let mut kvs = (*h.fleet.kvs.as_ref().unwrap().object).clone();
    kvs.metadata.deletion_timestamp = Some(Time(t0()));
    h.fleet.kvs.as_mut().unwrap().object = Arc::new(kvs);
    h.fleet.conflicts.insert("p1".into(), 1);
    let effects = h.observe();
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::RemoveFinalizer(_)))
    );
    let effects = h.observe();
    assert_eq!(pod_writes(&effects), [("p1", &PodChange::Release)]);
    assert!(
        matches!(effects.last(), Some(Effect::RemoveFinalizer(_))),
        "{effects:#?}"
    );
}

// --- the breaker

#[test]
fn two_of_five_faulty_with_min_three_ejects_two() {
    let mut h = Harness::running(custom(3, 0, json!(null)), 5);
    let effects = h.report(&["p1", "p3"]);
    assert_eq!(h.with_traffic("no"), ["p1", "p3"]);
    let ejected: Vec<_> = events(&effects)
        .into_iter()
        .filter(|(r, _, _)| *r == "PodEjected")
        .collect();
    assert_eq!(ejected.len(), 2);
    assert_eq!(ejected[0].1.as_deref(), Some("p1"));
    assert_eq!(
        ejected[0].2,
        "pod p1 ejected by breaker faulty: reported by the custom detector; 4 of 5 pods keep traffic (minimum 3)"
    );
    assert!(effects.contains(&Effect::CountDecision {
        breaker: "faulty".into(),
        pod: "p3".into(),
        kind: DecisionKind::Break,
        dry_run: false
    }));
    let p1 = &h.fleet.pods["p1"];
    assert_eq!(&p1.labels[STRATEGY_LABEL], "faulty");
    assert_eq!(&p1.annotations[RETRY_COUNT_ANNOTATION], "1");
    assert_eq!(&p1.annotations[BREAK_AT_ANNOTATION], t0().to_string());
}

#[test]
fn the_floor_by_count_spares_the_rest_and_says_so_once() {
    let mut h = Harness::running(custom(3, 0, json!(null)), 4);
    let effects = h.report(&["p0", "p1", "p2"]);
    assert_eq!(h.with_traffic("no"), ["p0"]);
    let floor: Vec<_> = events(&effects)
        .into_iter()
        .filter(|(r, _, _)| *r == "MinimumAvailable")
        .collect();
    assert_eq!(
        floor[0].2,
        "breaker faulty: 2 anomalous pod(s) keep traffic (p1, p2): 3 of 4 pods must keep traffic"
    );
    h.observe();
    let again = h.report(&["p0", "p1", "p2"]);
    assert!(
        reasons(&again).is_empty(),
        "a lasting state is reported once"
    );
    assert_eq!(h.with_traffic("no"), ["p0"]);
}

#[test]
fn the_ratio_floor_is_counted_on_all_ready_pods() {
    let mut h = Harness::running(custom(1, 50, json!({"mode": "periodic", "period": 60})), 6);
    h.report(&["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(h.with_traffic("no"), ["p0", "p1", "p2"]);
    h.observe();
    // Three serve, the floor is still ceil(6 × 50%) = 3: nothing more goes.
    h.report(&["p3", "p4", "p5"]);
    assert_eq!(h.with_traffic("no"), ["p0", "p1", "p2"]);
}

#[test]
fn a_decision_on_a_stale_view_is_not_carried_out_and_is_retried() {
    let mut h = Harness::running(custom(1, 0, json!(null)), 3);
    h.fleet.conflicts.insert("p2".into(), 1);
    let effects = h.report(&["p2"]);
    assert!(
        reasons(&effects).is_empty(),
        "no event for a write that did not apply"
    );
    assert_eq!(h.with_traffic("no"), Vec::<&str>::new());
    h.observe();
    h.report(&["p2"]);
    assert_eq!(h.with_traffic("no"), ["p2"]);
}

#[test]
fn writes_the_watch_has_not_shown_yet_are_taken_into_account() {
    let mut h = Harness::running(custom(2, 0, json!(null)), 3);
    h.report(&["p0"]);
    // No observation in between: the next evaluation must still know p0 is out.
    h.report(&["p1"]);
    assert_eq!(h.with_traffic("no"), ["p0"], "the floor of 2 holds");
}

#[test]
fn a_version_shown_between_two_writes_does_not_hide_the_last_one() {
    // p0 goes out and back (1 s period), then out again at once. The watch, relisting
    // after a 410, then shows the version between the last two writes: p0 serving. The
    // last write (p0 out) is still on its way to the index and must still count, or p1
    // goes too and one pod serves under a floor of two.
    let mut h = Harness::running(custom(2, 0, json!({"mode": "periodic", "period": 1.0})), 3);
    h.report(&["p0"]);
    h.observe();
    h.at(1);
    assert_eq!(h.with_traffic("no"), Vec::<&str>::new());
    let between = h.observed();
    h.report(&["p0"]);
    assert_eq!(h.with_traffic("no"), ["p0"]);
    h.feed(Input::Observed(between));
    h.report(&["p1"]);
    assert_eq!(h.with_traffic("no"), ["p0"], "the floor of 2 holds");
}

#[test]
fn a_source_error_ejects_nothing_and_reaches_the_status_once() {
    let mut h = Harness::running(custom(1, 0, json!(null)), 3);
    let effects = h.findings("faulty", Err(source_error()));
    assert!(pod_writes(&effects).is_empty());
    assert_eq!(reasons(&effects), ["SourceError"]);
    let (reason, message) = ready_reason(&effects).unwrap();
    assert_eq!(reason, "SourceError");
    assert!(
        message.starts_with(
            "breaker faulty: query `up` to Prometheus http://prometheus:9090: connection refused"
        ),
        "{message}"
    );
    let again = h.findings("faulty", Err(source_error()));
    assert!(again.is_empty(), "{again:?}");
    let recovered = h.report(&[]);
    assert_eq!(ready_reason(&recovered).unwrap().0, "Running");
}

#[test]
fn answers_for_a_breaker_no_longer_in_the_spec_are_ignored() {
    let mut h = Harness::running(custom(1, 0, json!(null)), 3);
    let names = vec!["p0".to_string()];
    let effects = h.findings("removed", Ok(detect::custom(&names)));
    assert!(effects.is_empty());
}

#[test]
fn a_dry_run_touches_no_pod_and_reports_each_decision_once() {
    let mut spec = custom(1, 0, json!({"mode": "periodic", "period": 5}));
    spec["dryRun"] = json!(true);
    let mut h = Harness::new(spec, 3);
    let effects = h.observe();
    assert!(
        pod_writes(&effects).is_empty(),
        "nothing is adopted in a dry run"
    );
    assert_eq!(ready_reason(&effects).unwrap().0, "DryRun");
    let effects = h.report(&["p1"]);
    assert!(pod_writes(&effects).is_empty());
    assert_eq!(events(&effects)[0].0, "DryRunEject");
    assert!(
        events(&effects)[0]
            .2
            .starts_with("dry run: pod p1 ejected by breaker faulty")
    );
    assert!(effects.contains(&Effect::CountDecision {
        breaker: "faulty".into(),
        pod: "p1".into(),
        kind: DecisionKind::Break,
        dry_run: true
    }));
    assert!(h.report(&["p1"]).is_empty(), "reported once while it holds");
    h.report(&[]);
    assert_eq!(
        reasons(&h.report(&["p1"])),
        ["DryRunEject"],
        "again once it came back"
    );
}

// --- the activator

#[test]
fn periodic_puts_pods_back_after_the_period() {
    let mut h = Harness::running(custom(1, 0, json!({"mode": "periodic", "period": 10})), 3);
    h.report(&["p0"]);
    h.observe();
    assert_eq!(
        h.state().activator_due(),
        Some(t0() + SignedDuration::from_secs(10))
    );
    assert!(h.at(9).is_empty());
    let effects = h.at(10);
    assert_eq!(
        pod_writes(&effects),
        [("p0", &PodChange::Reinstate { to: Traffic::Yes })]
    );
    assert_eq!(reasons(&effects), ["PodActivated"]);
    assert_eq!(h.with_traffic("yes"), ["p0", "p1", "p2"]);
    assert_eq!(h.state().activator_due(), None, "nothing left to do");
}

#[test]
fn a_pod_ejected_by_a_clock_an_hour_ahead_is_given_back_at_once_with_a_warning() {
    let mut h = Harness::running(custom(1, 0, json!({"mode": "periodic", "period": 600})), 3);
    // Ejected by a replica whose clock ran an hour ahead, then seen by one on time.
    h.now = t0() + SignedDuration::from_hours(1);
    h.report(&["p0"]);
    h.now = t0() + SignedDuration::from_secs(1);
    h.observe();
    assert_eq!(h.state().activator_due(), Some(h.now));
    let effects = h.at(1);
    assert_eq!(
        pod_writes(&effects),
        [("p0", &PodChange::Reinstate { to: Traffic::Yes })]
    );
    let notes: Vec<&Note> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish(r) => Some(&r.note),
            _ => None,
        })
        .collect();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].reason(), "PodActivated");
    assert!(notes[0].is_warning());
    assert!(
        notes[0]
            .to_string()
            .contains("3599 s ahead of the operator's clock"),
        "{}",
        notes[0]
    );
}

#[test]
fn retry_and_kill_waits_longer_each_time_then_kills() {
    let spec = custom(
        1,
        0,
        json!({"mode": "retryAndKill", "period": 10, "maxRetryCount": 1}),
    );
    let mut h = Harness::running(spec, 3);
    h.report(&["p0"]);
    // No observation in between: the step works from its own writes.
    h.at(10);
    assert_eq!(h.with_traffic("yes"), ["p0", "p1", "p2"]);
    h.observe();
    h.report(&["p0"]);
    assert_eq!(&h.fleet.pods["p0"].annotations[RETRY_COUNT_ANNOTATION], "2");
    h.observe();
    // Ejected twice > maxRetryCount 1: killed at once.
    let effects = h.at(10);
    assert_eq!(
        pod_writes(&effects),
        [("p0", &PodChange::Kill(KillMethod::Evict))]
    );
    assert_eq!(reasons(&effects), ["PodKilled"]);
    assert!(!h.fleet.pods.contains_key("p0"));
}

#[test]
fn a_kill_refused_by_a_disruption_budget_is_reported_once_and_tried_each_second() {
    let spec = custom(
        1,
        0,
        json!({"mode": "retryAndKill", "period": 10, "maxRetryCount": 0}),
    );
    let mut h = Harness::running(spec, 3);
    h.fleet.budget_exhausted = true;
    h.report(&["p0"]);
    h.observe();
    // Ejected once > maxRetryCount 0: killed when due, but the budget refuses.
    let effects = h.at(10);
    assert_eq!(
        pod_writes(&effects),
        [("p0", &PodChange::Kill(KillMethod::Evict))]
    );
    assert_eq!(reasons(&effects), ["KillBlocked"]);
    assert!(
        events(&effects)
            .iter()
            .any(|(_, _, n)| n.contains("PodDisruptionBudget") && n.contains("stays out")),
        "{:?}",
        events(&effects)
    );
    assert_eq!(h.with_traffic("no"), ["p0"], "the pod stays out of traffic");
    let retry = t0() + SignedDuration::from_secs(11);
    assert_eq!(
        h.state().activator_due(),
        Some(retry),
        "tried again a second later"
    );
    // Not before: nothing is asked in between.
    assert!(pod_writes(&h.at(10)).is_empty());
    // Refused again: not reported again.
    let effects = h.at(11);
    assert_eq!(pod_writes(&effects).len(), 1);
    assert!(reasons(&effects).is_empty(), "{:?}", reasons(&effects));
    assert_eq!(h.fleet.evictions, 2);
    // Once the budget allows it, the pod is evicted and the kill reported.
    h.fleet.budget_exhausted = false;
    let effects = h.at(12);
    assert_eq!(reasons(&effects), ["PodKilled"]);
    assert!(!h.fleet.pods.contains_key("p0"));
    h.observe();
    assert_eq!(h.state().activator_due(), None, "nothing left to retry");
}

#[test]
fn kill_method_delete_is_never_refused_by_a_budget() {
    let spec = custom(
        1,
        0,
        json!({"mode": "retryAndKill", "period": 10, "maxRetryCount": 0, "killMethod": "delete"}),
    );
    let mut h = Harness::running(spec, 3);
    h.fleet.budget_exhausted = true;
    h.report(&["p0"]);
    h.observe();
    let effects = h.at(10);
    assert_eq!(
        pod_writes(&effects),
        [("p0", &PodChange::Kill(KillMethod::Delete))]
    );
    assert_eq!(reasons(&effects), ["PodKilled"]);
    assert_eq!(h.fleet.evictions, 0);
}

#[test]
fn retry_and_pause_parks_up_to_max_pause_count_then_kills() {
    let spec = custom(
        1,
        0,
        json!({"mode": "retryAndPause", "period": 10, "maxRetryCount": 0, "maxPauseCount": 1}),
    );
    let mut h = Harness::running(spec, 4);
    h.report(&["p0", "p1"]);
    h.observe();
    let effects = h.at(0);
    assert_eq!(
        pod_writes(&effects),
        [
            ("p0", &PodChange::Reinstate { to: Traffic::Pause }),
            ("p1", &PodChange::Kill(KillMethod::Evict))
        ]
    );
    assert_eq!(h.with_traffic("pause"), ["p0"]);
    assert!(
        events(&effects)
            .iter()
            .any(|(r, _, n)| *r == "PodPaused" && n.contains("1 of at most 1 pods paused"))
    );
}

#[test]
fn an_activation_that_does_not_apply_is_tried_again() {
    let mut h = Harness::running(custom(1, 0, json!({"mode": "periodic", "period": 10})), 2);
    h.report(&["p0"]);
    h.observe();
    h.fleet.conflicts.insert("p0".into(), 1);
    h.at(10);
    assert_eq!(h.with_traffic("no"), ["p0"]);
    assert!(h.state().activator_due().is_some_and(|due| due <= h.now));
    h.observe();
    h.at(11);
    assert_eq!(h.with_traffic("no"), Vec::<&str>::new());
}

#[test]
fn after_a_restart_ejected_pods_are_handled_from_their_annotations() {
    let mut h = Harness::new(custom(1, 0, json!({"mode": "periodic", "period": 30})), 3);
    // Ejected by an earlier run of the operator, 20 s ago.
    let earlier = t0() - SignedDuration::from_secs(20);
    let p1 = h.fleet.pods.get_mut("p1").unwrap();
    p1.labels.insert(TRAFFIC_LABEL, "no");
    p1.labels.insert(NAME_LABEL, "web");
    p1.labels.insert(STRATEGY_LABEL, "faulty");
    p1.annotations
        .insert(BREAK_AT_ANNOTATION, earlier.to_string());
    p1.annotations.insert(RETRY_COUNT_ANNOTATION, "1");
    h.observe();
    assert_eq!(
        h.with_traffic("no"),
        ["p1"],
        "an ejected pod is not re-adopted"
    );
    assert_eq!(
        h.state().activator_due(),
        Some(t0() + SignedDuration::from_secs(10))
    );
    assert!(h.at(9).is_empty());
    h.at(10);
    assert_eq!(h.with_traffic("no"), Vec::<&str>::new());
}

#[test]
fn a_pod_with_unreadable_marks_is_counted_unknown_and_left_alone() {
    let mut h = Harness::new(custom(0, 0, json!(null)), 2);
    let p1 = h.fleet.pods.get_mut("p1").unwrap();
    p1.labels.insert(TRAFFIC_LABEL, "no");
    p1.labels.insert(NAME_LABEL, "web");
    p1.annotations.insert(BREAK_AT_ANNOTATION, "yesterday");
    let effects = h.observe();
    assert_eq!(
        last_status(&effects)
            .unwrap()
            .pod_count
            .as_ref()
            .unwrap()
            .nb_pods_unknown,
        1
    );
    assert_eq!(h.state().activator_due(), None);
    let effects = h.report(&["p1"]);
    assert!(pod_writes(&effects).is_empty());
}

// --- fleet safety

fn with_breaker_fields(min_count: u32, fields: serde_json::Value) -> serde_json::Value {
    let mut spec = custom(min_count, 0, json!({"mode": "periodic", "period": 60}));
    for (k, v) in fields.as_object().unwrap() {
        spec["breakers"][0][k] = v.clone();
    }
    spec
}

#[test]
fn outside_losses_below_the_floor_bring_ejected_pods_back_in_one_pass() {
    // 6 pods, floor 4 by count, 2 ejected.
    let mut h = Harness::running(custom(4, 0, json!({"mode": "periodic", "period": 600})), 6);
    h.report(&["p0"]);
    h.at(1);
    h.report(&["p1"]);
    h.observe();
    assert_eq!(h.with_traffic("no"), ["p0", "p1"]);
    assert_eq!(
        h.state().activator_due(),
        Some(t0() + SignedDuration::from_secs(600))
    );
    // Two serving pods turn unready: 2 serve, the floor is 4.
    for name in ["p4", "p5"] {
        h.fleet.pods.get_mut(name).unwrap().ready = false;
    }
    h.observe();
    assert!(
        h.state().activator_due().is_some_and(|due| due <= h.now),
        "due at once"
    );
    let effects = h.at(2);
    assert_eq!(h.with_traffic("no"), Vec::<&str>::new());
    let restored: Vec<_> = events(&effects)
        .into_iter()
        .filter(|(r, _, _)| *r == "FloorRestored")
        .collect();
    assert_eq!(restored.len(), 2);
    // Out the longest first.
    assert_eq!(restored[0].1.as_deref(), Some("p0"));
    assert_eq!(
        restored[0].2,
        "pod p0 re-admitted early: 2 of 4 pods serve, fewer than the floor 4 of breaker faulty"
    );
    assert_eq!(
        &h.fleet.pods["p0"].annotations[RETRY_COUNT_ANNOTATION], "1",
        "the count is kept"
    );
    assert!(effects.contains(&Effect::CountDecision {
        breaker: "faulty".into(),
        pod: "p1".into(),
        kind: DecisionKind::Restore,
        dry_run: false
    }));
}

#[test]
fn a_breaker_in_panic_ejects_nothing_and_says_so_once_each_way() {
    let mut h = Harness::running(
        with_breaker_fields(1, json!({"panicThresholdPercent": 50})),
        5,
    );
    // 3 of 5 flagged: 2 of 5 healthy < 50%.
    let effects = h.report(&["p0", "p1", "p2"]);
    assert!(pod_writes(&effects).is_empty());
    assert_eq!(reasons(&effects), ["Panic"]);
    assert_eq!(
        events(&effects)[0].2,
        "breaker faulty in panic: 2 of 5 judged pods healthy, fewer than panicThresholdPercent 50%: the problem looks fleet-wide, nothing is ejected"
    );
    let (reason, message) = ready_reason(&effects).unwrap();
    assert_eq!(reason, "Panic");
    assert!(
        message.starts_with("breaker faulty: 2 of 5 judged pods healthy"),
        "{message}"
    );
    assert!(
        reasons(&h.report(&["p0", "p1", "p2"])).is_empty(),
        "entered once"
    );
    // One flagged: out of panic, and that pod goes.
    let effects = h.report(&["p3"]);
    assert_eq!(h.with_traffic("no"), ["p3"]);
    assert_eq!(reasons(&effects), ["PanicEnded", "PodEjected"]);
    assert_eq!(ready_reason(&effects).unwrap().0, "Running");
    assert_eq!(
        breaker_states(&effects),
        [BreakerState {
            anomalous: 1,
            spared_by_floor: 0,
            panic: false,
            source_failing: false,
        }]
    );
}

#[test]
fn breaker_gauges_change_with_the_evaluation_and_only_then() {
    let mut h = Harness::running(
        with_breaker_fields(1, json!({"panicThresholdPercent": 50})),
        5,
    );
    let effects = h.report(&["p0", "p1", "p2"]);
    assert_eq!(
        breaker_states(&effects),
        [BreakerState {
            anomalous: 3,
            spared_by_floor: 0,
            panic: true,
            source_failing: false,
        }]
    );
    // The same evaluation again: nothing to set.
    assert!(breaker_states(&h.report(&["p0", "p1", "p2"])).is_empty());
    let effects = h.findings("faulty", Err(source_error()));
    assert_eq!(
        breaker_states(&effects),
        [BreakerState {
            source_failing: true,
            ..BreakerState::default()
        }]
    );
}

fn breaker_states(effects: &[Effect]) -> Vec<BreakerState> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::BreakerState { state, .. } => Some(*state),
            _ => None,
        })
        .collect()
}

#[test]
fn at_most_max_ejections_per_evaluation_worst_first() {
    let mut h = Harness::running(
        with_breaker_fields(1, json!({"maxEjectionsPerEvaluation": 1})),
        6,
    );
    h.report(&["p1", "p2", "p3", "p4"]);
    assert_eq!(h.with_traffic("no"), ["p1"]);
    h.observe();
    h.report(&["p1", "p2", "p3", "p4"]);
    assert_eq!(h.with_traffic("no"), ["p1", "p2"]);
}

#[test]
fn a_dry_run_breaker_reports_while_the_others_act() {
    let mut spec = custom(1, 0, json!({"mode": "periodic", "period": 60}));
    spec["breakers"] = json!([
        {"name": "faulty", "evaluationPeriod": 1, "customService": "detector:8080"},
        {"name": "trial", "evaluationPeriod": 1, "customService": "detector:8081", "dryRun": true}
    ]);
    let mut h = Harness::running(spec, 4);
    let names = vec!["p1".to_string()];
    let trial = h.findings("trial", Ok(detect::custom(&names)));
    assert!(pod_writes(&trial).is_empty());
    assert_eq!(reasons(&trial), ["DryRunEject"]);
    let faulty = h.report(&["p2"]);
    assert_eq!(pod_writes(&faulty).len(), 1);
    assert_eq!(h.with_traffic("no"), ["p2"]);
}

#[test]
fn retries_are_forgotten_once_a_pod_served_forget_after() {
    let spec = custom(
        1,
        0,
        json!({"mode": "retryAndKill", "period": 10, "maxRetryCount": 3, "forgetAfter": 100}),
    );
    let mut h = Harness::running(spec, 3);
    h.report(&["p0"]);
    h.observe();
    h.at(10);
    assert_eq!(h.with_traffic("yes"), ["p0", "p1", "p2"]);
    h.observe();
    assert_eq!(
        h.state().activator_due(),
        Some(t0() + SignedDuration::from_secs(110))
    );
    assert!(h.at(109).is_empty());
    let effects = h.at(110);
    assert_eq!(reasons(&effects), ["RetriesForgotten"]);
    assert_eq!(&h.fleet.pods["p0"].annotations[RETRY_COUNT_ANNOTATION], "0");
    h.observe();
    assert_eq!(h.state().activator_due(), None, "nothing left to forget");
}

#[test]
fn a_status_on_its_way_is_not_written_again_when_the_resource_moves_meanwhile() {
    let mut h = Harness::new(custom(1, 0, json!(null)), 2);
    let first = h.observe();
    assert!(last_status(&first).is_some());
    // Another change (the finalizer, a label) lands before the watch shows the status.
    let mut kvs = (*h.fleet.kvs.as_ref().unwrap().object).clone();
    kvs.metadata.resource_version = Some("11".into());
    kvs.metadata.labels = Some(BTreeMap::from([("team".to_string(), "shop".to_string())]));
    h.fleet.kvs.as_mut().unwrap().object = Arc::new(kvs);
    let again = h.observe();
    assert!(last_status(&again).is_none(), "{again:?}");
}

// --- status.breakers[]: what each evaluation computed

fn outlier_spec(pods_min: u32) -> serde_json::Value {
    json!({
        "service": "web",
        "breakers": [{"name": "p99", "evaluationPeriod": 1, "minPodsAvailableCount": pods_min,
                      "continuousOutlier": {"prometheusService": "p:9090", "promQL": "q", "podNamekey": "pod"}}],
    })
}

/// Per-pod p99 latencies in seconds, `slow` at 10 ×.
fn p99(pods: usize, slow: Option<usize>) -> Findings {
    let samples: Vec<detect::ContinuousSample> = (0..pods)
        .map(|i| detect::ContinuousSample {
            pod: format!("p{i}"),
            value: if Some(i) == slow {
                0.3
            } else {
                0.028 + 0.001 * (i % 3) as f64
            },
        })
        .collect();
    let Some(spec) = resource(outlier_spec(1)).spec.resolve().ok() else {
        unreachable!("the spec is valid")
    };
    let kubervisor_api::Detection::Outlier(rule) = &spec.breakers[0].detection else {
        unreachable!("an outlier breaker")
    };
    detect::continuous_outlier(rule, &samples)
}

impl Harness {
    /// The API server stores the last status asked for, and the watch shows it.
    fn store_status(&mut self) {
        let Some(status) = last_status(&self.effects).cloned() else {
            return;
        };
        let entry = self.fleet.kvs.as_mut().unwrap();
        let mut kvs = (*entry.object).clone();
        kvs.status = Some(status);
        entry.object = Arc::new(kvs);
        self.observe();
    }
}

fn status_writes(effects: &[Effect]) -> usize {
    statuses(effects).len()
}

#[test]
fn an_evaluation_reaches_status_breakers_and_the_ejection_event_carries_score_and_fleet() {
    let mut h = Harness::running(outlier_spec(1), 8);
    let effects = h.findings("p99", Ok(p99(8, Some(5))));
    assert_eq!(pod_writes(&effects).len(), 1);
    let ejected = events(&effects);
    assert_eq!(ejected[0].0, "PodEjected");
    assert!(
        ejected[0].2.contains("modified z-score")
            && ejected[0].2.contains("fleet of 8: median 0.029, MAD 0.001"),
        "{}",
        ejected[0].2
    );
    let status = last_status(&effects).expect("a status write");
    let [result] = status.breakers.as_slice() else {
        panic!("{:?}", status.breakers)
    };
    assert_eq!(result.name, "p99");
    assert_eq!(result.result, "Ok");
    assert_eq!(
        (
            result.judged,
            result.anomalous,
            result.ejected,
            result.spared_by_floor
        ),
        (8, 1, 1, 0)
    );
    assert_eq!(result.last_evaluation_time, Some(Time(h.now)));
    let statistic = result.statistic.as_ref().unwrap();
    assert_eq!(
        (
            statistic.kind.as_str(),
            statistic.hosts,
            statistic.median,
            statistic.mad
        ),
        ("medianMad", 8, Some(0.029), Some(0.001))
    );
    assert_eq!(result.anomalous_pods.len(), 1);
    assert_eq!(result.anomalous_pods[0].pod, "p5");
    assert_eq!(result.anomalous_pods[0].threshold, 3.5);
    assert!(result.anomalous_pods[0].score > 100.0);
}

#[test]
fn a_quiet_fleet_costs_no_status_write_per_tick() {
    let mut h = Harness::running(outlier_spec(1), 6);
    h.store_status();
    let first = h.findings("p99", Ok(p99(6, None)));
    assert_eq!(status_writes(&first), 1, "the first evaluation is shown");
    h.store_status();
    let before = h.effects.len();
    for tick in 1..=20 {
        h.now = t0() + SignedDuration::from_secs(tick);
        h.findings("p99", Ok(p99(6, None)));
        h.observe();
    }
    let quiet = &h.effects[before..];
    // Nothing changed: not even the pod counts are given to the metrics again.
    assert!(quiet.is_empty(), "{quiet:?}");
    // Something other than the time changes: one write.
    h.now = t0() + SignedDuration::from_secs(30);
    let changed = h.findings("p99", Ok(p99(6, Some(2))));
    assert_eq!(status_writes(&changed), 1);
}

#[test]
fn too_few_hosts_and_source_errors_are_results_too() {
    let spec = json!({
        "service": "web",
        "breakers": [{"name": "rate", "evaluationPeriod": 1,
                      "successRateOutlier": {"prometheusService": "p:9090", "promQL": "q", "podNamekey": "pod",
                                             "key": "code", "goodValues": ["200"]}}],
    });
    let mut h = Harness::running(spec.clone(), 4);
    let rule = match &resource(spec).spec.resolve().unwrap().breakers[0].detection {
        kubervisor_api::Detection::SuccessRate(rule) => rule.clone(),
        other => panic!("{other:?}"),
    };
    let samples: Vec<detect::DiscreteSample> = (0..4)
        .flat_map(|i| {
            let bad = if i == 0 { 400.0 } else { 10.0 };
            [("200", 1000.0 - bad), ("500", bad)].map(|(code, n)| detect::DiscreteSample {
                pod: format!("p{i}"),
                key: code.into(),
                value: n,
            })
        })
        .collect();
    let effects = h.findings("rate", Ok(detect::success_rate_outlier(&rule, &samples)));
    assert!(
        pod_writes(&effects).is_empty(),
        "nothing judged, nothing ejected"
    );
    let result = &last_status(&effects).unwrap().breakers[0];
    assert_eq!(result.result, "NotEnoughData");
    assert_eq!((result.judged, result.anomalous, result.ejected), (0, 0, 0));
    assert_eq!(
        result.message.as_deref(),
        Some("4 pods with enough requests, fewer than minimumHosts 5: nothing is judged")
    );
    // No series at all: nothing judged, and the status says why.
    let effects = h.findings("rate", Ok(detect::success_rate_outlier(&rule, &[])));
    let result = &last_status(&effects).unwrap().breakers[0];
    assert_eq!(result.result, "NotEnoughData");
    let effects = h.findings("rate", Ok(Findings::default()));
    let result = &last_status(&effects).unwrap().breakers[0];
    assert_eq!(
        (result.result.as_str(), result.message.as_deref()),
        (
            "NotEnoughData",
            Some("the query returned no series: no pod is judged")
        )
    );
    let effects = h.findings("rate", Err(source_error()));
    let result = &last_status(&effects).unwrap().breakers[0];
    assert_eq!(result.result, "SourceError");
    assert!(
        result
            .message
            .as_deref()
            .unwrap()
            .contains("connection refused"),
        "{result:?}"
    );
}

#[test]
fn a_dry_run_breaker_and_a_panic_say_so_in_their_result() {
    let mut spec = outlier_spec(1);
    spec["breakers"][0]["dryRun"] = json!(true);
    let mut h = Harness::running(spec, 8);
    let effects = h.findings("p99", Ok(p99(8, Some(5))));
    assert!(pod_writes(&effects).is_empty());
    let result = &last_status(&effects).unwrap().breakers[0];
    assert_eq!((result.result.as_str(), result.ejected), ("DryRun", 1));

    let mut spec = custom(1, 0, json!(null));
    spec["breakers"][0]["panicThresholdPercent"] = json!(80);
    let mut h = Harness::running(spec, 4);
    let effects = h.report(&["p0", "p1"]);
    let result = &last_status(&effects).unwrap().breakers[0];
    assert_eq!(result.result, "Panic");
    assert_eq!((result.judged, result.anomalous, result.ejected), (4, 2, 0));
}

#[test]
fn after_a_restart_the_stored_results_need_no_rewrite() {
    let mut h = Harness::running(outlier_spec(1), 6);
    h.findings("p99", Ok(p99(6, None)));
    h.store_status();
    // A new task, as after a restart, over the same stored status.
    h.state = Some(State::new(NS, "web"));
    h.effects.clear();
    h.observe();
    h.now = t0() + SignedDuration::from_secs(5);
    h.findings("p99", Ok(p99(6, None)));
    assert_eq!(status_writes(&h.effects), 0, "{:?}", h.effects);
}

#[test]
fn two_quiet_custom_breakers_cost_no_status_write_per_tick() {
    let spec = two_custom_breakers();
    let mut h = Harness::running(spec, 10);
    h.store_status();
    for breaker in ["breaker-1", "breaker-2"] {
        h.findings(breaker, Ok(detect::custom(&[])));
        h.store_status();
    }
    let before = h.effects.len();
    for tick in 1..=10 {
        h.now = t0() + SignedDuration::from_secs(5 * tick);
        for breaker in ["breaker-1", "breaker-2"] {
            h.findings(breaker, Ok(detect::custom(&[])));
            h.store_status();
        }
    }
    let quiet = &h.effects[before..];
    assert_eq!(status_writes(quiet), 0, "{quiet:#?}");
}

/// A resource in readiness-gate mode over `pods` pods that declare the gate.
fn gated(min_count: u32, min_ratio: u32, pods: usize) -> Harness {
    let mut spec = custom(
        min_count,
        min_ratio,
        json!({"mode": "periodic", "period": 10}),
    );
    spec["trafficControl"] = json!("readinessGate");
    let mut h = Harness::new(spec, pods);
    for pod in h.fleet.pods.values_mut() {
        pod.traffic_gate = true;
        // Not Ready until the gate is set, as the kubelet would have it.
        pod.ready = false;
    }
    h
}

fn gate_writes(effects: &[Effect]) -> Vec<(&str, bool)> {
    pod_writes(effects)
        .into_iter()
        .filter_map(|(pod, change)| match change {
            PodChange::SetGate(serve) => Some((pod, *serve)),
            _ => None,
        })
        .collect()
}

#[test]
fn readiness_gate_mode_ejects_through_the_condition_and_never_relabels() {
    let mut h = gated(1, 0, 3);
    let effects = h.observe();
    // Adopted (state in annotations, the name label), then the gate follows: True.
    assert_eq!(
        gate_writes(&effects),
        [("p0", true), ("p1", true), ("p2", true)]
    );
    for pod in h.fleet.pods.values() {
        assert_eq!(&pod.annotations[TRAFFIC_LABEL], "yes");
        assert!(!pod.labels.contains_key(TRAFFIC_LABEL), "{:?}", pod.labels);
        assert!(pod.ready);
    }
    h.observe();
    let labels_before = h.fleet.pods["p0"].labels.clone();

    let effects = h.report(&["p0"]);
    assert_eq!(reasons(&effects), ["PodEjected"]);
    assert_eq!(gate_writes(&effects), [("p0", false)]);
    let p0 = &h.fleet.pods["p0"];
    assert_eq!(p0.labels, labels_before, "no label changes on ejection");
    assert_eq!(&p0.annotations[TRAFFIC_LABEL], "no");
    assert_eq!(&p0.annotations[STRATEGY_LABEL], "faulty");
    assert_eq!(p0.traffic_condition, Some(false));
    assert!(!p0.ready, "the gate makes the pod unready");

    // Back after the period: the gate is True again, labels still untouched.
    h.observe();
    let effects = h.at(10);
    assert_eq!(reasons(&effects), ["PodActivated"]);
    assert_eq!(gate_writes(&effects), [("p0", true)]);
    assert_eq!(h.fleet.pods["p0"].labels, labels_before);
    assert!(h.fleet.pods["p0"].ready);
}

#[test]
fn readiness_gate_mode_counts_pods_whose_containers_are_ready() {
    // m = 3 pods whose containers are ready, floor ⌈3 × 50 %⌉ = 2. Counting Ready pods
    // instead (the ejected one is unready by its gate) would give m = 2, floor 1, and
    // let a second pod go.
    let mut h = gated(1, 50, 3);
    h.observe();
    h.observe();
    h.report(&["p0"]);
    h.observe();
    assert!(!h.fleet.pods["p0"].ready);
    let effects = h.report(&["p0", "p1"]);
    assert!(
        gate_writes(&effects).is_empty(),
        "{:?}",
        pod_writes(&effects)
    );
    assert_eq!(h.fleet.pods["p1"].traffic_condition, Some(true));
    assert_eq!(reasons(&effects), ["MinimumAvailable"]);
}

#[test]
fn readiness_gate_mode_leaves_pods_without_the_gate_alone_and_says_so() {
    let mut h = gated(1, 0, 3);
    let bare = h.fleet.pods.get_mut("p2").unwrap();
    bare.traffic_gate = false;
    bare.ready = true;
    let effects = h.observe();
    assert!(
        pod_writes(&effects).iter().all(|(pod, _)| *pod != "p2"),
        "{:?}",
        pod_writes(&effects)
    );
    let notes: Vec<_> = events(&effects)
        .into_iter()
        .filter(|(r, _, _)| *r == "NoReadinessGate")
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].1.as_deref(), Some("p2"));
    let status = last_status(&h.effects).expect("a status");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(
        ready
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("without the readiness gate kubervisor.k8s.io/traffic left alone: p2"),
        "{ready:?}"
    );
    // Reported once, and never ejected even when named.
    h.observe();
    let effects = h.report(&["p2"]);
    assert!(pod_writes(&effects).is_empty());
    assert!(
        h.effects
            .iter()
            .filter(|e| matches!(e, Effect::Publish(r) if r.note.reason() == "NoReadinessGate"))
            .count()
            == 1
    );
    assert!(!h.fleet.pods["p2"].labels.contains_key(NAME_LABEL));
}

/// Three continuousOutlier breakers on the same latency query.
fn three_outlier_breakers() -> serde_json::Value {
    let breaker = |name: &str| {
        json!({"name": name, "evaluationPeriod": 1, "minPodsAvailableCount": 1,
               "continuousOutlier": {"prometheusService": "p:9090", "promQL": "q", "podNamekey": "pod"}})
    };
    json!({"service": "web", "breakers": [breaker("a"), breaker("b"), breaker("c")]})
}

#[test]
fn a_resource_starting_with_three_breakers_writes_its_status_twice() {
    let mut h = Harness::new(three_outlier_breakers(), 6);
    let start = h.observe();
    assert_eq!(status_writes(&start), 1, "Ready as soon as it runs");
    h.store_status();
    assert_eq!(status_writes(&h.findings("a", Ok(p99(6, None)))), 0);
    assert_eq!(status_writes(&h.findings("b", Ok(p99(6, None)))), 0);
    let last = h.findings("c", Ok(p99(6, None)));
    assert_eq!(status_writes(&last), 1, "{last:?}");
    let names: Vec<&str> = last_status(&last)
        .unwrap()
        .breakers
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b", "c"], "every result in the one write");
}

#[test]
fn while_results_are_pending_other_changes_are_still_written_at_once() {
    let mut h = Harness::new(three_outlier_breakers(), 6);
    h.observe();
    h.store_status();
    // A breaker whose source fails changes the Ready condition: that cannot wait.
    let effects = h.findings("a", Err(source_error()));
    assert_eq!(status_writes(&effects), 1, "{effects:?}");
    assert_eq!(ready_reason(&effects).unwrap().0, "SourceError");
}

/// Per-pod p99 latencies that drift with `tick` as live metrics do, `slow` at 10 ×.
fn drifting_p99(pods: usize, slow: Option<usize>, tick: u64) -> Findings {
    let samples: Vec<detect::ContinuousSample> = (0..pods)
        .map(|i| detect::ContinuousSample {
            pod: format!("p{i}"),
            value: if Some(i) == slow {
                0.3 + 0.0007 * (tick % 11) as f64
            } else {
                0.028 + 0.001 * (i % 3) as f64 + 0.00003 * ((tick * 7 + i as u64) % 13) as f64
            },
        })
        .collect();
    let Some(spec) = resource(outlier_spec(1)).spec.resolve().ok() else {
        unreachable!("the spec is valid")
    };
    let kubervisor_api::Detection::Outlier(rule) = &spec.breakers[0].detection else {
        unreachable!("an outlier breaker")
    };
    detect::continuous_outlier(rule, &samples)
}

#[test]
fn numbers_that_follow_live_metrics_are_written_at_most_once_a_minute() {
    let mut h = Harness::running(outlier_spec(1), 8);
    h.store_status();
    h.findings("p99", Ok(drifting_p99(8, None, 0)));
    h.store_status();
    let mut writes = Vec::new();
    for tick in 1..=180 {
        h.now = t0() + SignedDuration::from_secs(tick as i64);
        let effects = h.findings("p99", Ok(drifting_p99(8, None, tick)));
        if status_writes(&effects) > 0 {
            writes.push(tick);
            h.store_status();
        }
    }
    assert_eq!(
        writes,
        [60, 120, 180],
        "the statistic is refreshed once a minute"
    );
    // Which pods are anomalous is news: written at once, mid-minute.
    h.now = t0() + SignedDuration::from_secs(185);
    let effects = h.findings("p99", Ok(drifting_p99(8, Some(3), 185)));
    assert_eq!(status_writes(&effects), 1, "{effects:?}");
}

#[test]
fn a_held_back_number_is_written_even_when_the_metrics_stop_moving() {
    let mut h = Harness::running(outlier_spec(1), 8);
    h.store_status();
    h.findings("p99", Ok(drifting_p99(8, None, 0)));
    h.store_status();
    h.now = t0() + SignedDuration::from_secs(1);
    assert_eq!(
        status_writes(&h.findings("p99", Ok(drifting_p99(8, None, 1)))),
        0
    );
    // The same numbers from now on: the one held back still reaches the status.
    let mut written = None;
    for tick in 2..=70 {
        h.now = t0() + SignedDuration::from_secs(tick);
        if status_writes(&h.findings("p99", Ok(drifting_p99(8, None, 1)))) > 0 {
            written = Some(tick);
            break;
        }
    }
    assert_eq!(written, Some(60));
    let median = last_status(&h.effects).unwrap().breakers[0]
        .statistic
        .as_ref()
        .unwrap()
        .median;
    let expected = match drifting_p99(8, None, 1).statistic {
        Some(FleetStatistic::MedianMad { median, .. }) => significant(median),
        other => panic!("{other:?}"),
    };
    assert_eq!(median, expected);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Whatever the metrics do, status writes are bounded by the changes in which pods are
    /// anomalous plus one refresh a minute; and every change of that set is written at once.
    #[test]
    fn status_writes_follow_verdicts_not_numbers(
        slow in proptest::collection::vec(proptest::option::of(0usize..8), 1..120),
    ) {
        let mut h = Harness::running(outlier_spec(8), 8);
        h.store_status();
        h.findings("p99", Ok(drifting_p99(8, None, 0)));
        h.store_status();
        let mut writes = 0usize;
        let mut verdict_changes = 0usize;
        let mut previous = None;
        for (i, slow) in slow.iter().enumerate() {
            let tick = i as u64 + 1;
            h.now = t0() + SignedDuration::from_secs(tick as i64);
            let effects = h.findings("p99", Ok(drifting_p99(8, *slow, tick)));
            let n = status_writes(&effects);
            if *slow != previous {
                verdict_changes += 1;
                proptest::prop_assert_eq!(n, 1, "a new verdict at tick {} is not written", tick);
            }
            previous = *slow;
            writes += n;
            if n > 0 {
                h.store_status();
            }
        }
        let refreshes = slow.len() / 60 + 1;
        proptest::prop_assert!(
            writes <= verdict_changes + refreshes,
            "{} writes for {} verdict changes over {} s", writes, verdict_changes, slow.len()
        );
    }
}

#[test]
fn a_start_up_whose_writes_the_watch_has_not_shown_yet_costs_two_status_writes() {
    let spec = two_custom_breakers();
    // The watch shows none of the status writes: each step computes the status anew, at a
    // later time, and must still see that the write on its way says the same.
    let mut h = Harness::new(spec, 10);
    h.observe();
    for (second, breaker) in [(1, "breaker-1"), (2, "breaker-2")] {
        h.now = t0() + SignedDuration::from_secs(second);
        h.observe();
        h.findings(breaker, Ok(detect::custom(&[])));
    }
    h.now = t0() + SignedDuration::from_secs(3);
    h.observe();
    let writes = statuses(&h.effects);
    assert_eq!(writes.len(), 2, "{writes:#?}");
    assert_eq!(writes[0].start_time, writes[1].start_time);
    assert_eq!(writes[1].breakers.len(), 2);
}

#[test]
fn an_older_write_showing_while_a_newer_one_is_on_its_way_is_not_news() {
    let spec = two_custom_breakers();
    let mut h = Harness::new(spec, 10);
    h.observe();
    h.findings("breaker-1", Ok(detect::custom(&[])));
    h.findings("breaker-2", Ok(detect::custom(&[])));
    let writes: Vec<KubervisorServiceStatus> = statuses(&h.effects).into_iter().cloned().collect();
    assert_eq!(writes.len(), 2, "Ready, then every breaker's result");
    // The watch shows the first write only now, the second still on its way.
    h.now = t0() + SignedDuration::from_secs(1);
    let before = h.effects.len();
    h.store_status_from(&writes[0]);
    assert_eq!(
        status_writes(&h.effects[before..]),
        0,
        "{:#?}",
        &h.effects[before..]
    );
    // Then the second shows: still nothing to write; and a real change is written.
    h.store_status_from(&writes[1]);
    h.now = t0() + SignedDuration::from_secs(2);
    assert_eq!(status_writes(&h.observe()), 0);
    let effects = h.findings("breaker-1", Ok(detect::custom(&["p3".to_string()])));
    assert_eq!(status_writes(&effects), 1);
}

impl Harness {
    /// The API server shows `status`.
    fn store_status_from(&mut self, status: &KubervisorServiceStatus) {
        let entry = self.fleet.kvs.as_mut().unwrap();
        let mut kvs = (*entry.object).clone();
        kvs.status = Some(status.clone());
        entry.object = Arc::new(kvs);
        self.observe();
    }
}

#[test]
fn a_write_found_stale_is_not_made_again_on_the_same_version() {
    let mut h = gated(1, 0, 3);
    h.observe();
    assert_eq!(h.fleet.pods["p0"].traffic_condition, Some(true));
    // Someone sets p0's gate condition False, and keeps writing the pod: the API server
    // answers that it changed, and the watch has not shown the newer version yet.
    let p0 = h.fleet.pods.get_mut("p0").unwrap();
    p0.traffic_condition = Some(false);
    p0.resource_version = "500".into();
    h.fleet.conflicts.insert("p0".into(), 1000);
    let on_p0 = |effects: &[Effect]| {
        pod_writes(effects)
            .iter()
            .filter(|(pod, _)| *pod == "p0")
            .count()
    };
    let effects = h.observe();
    assert_eq!(
        on_p0(&effects),
        1,
        "one attempt on the version read, not a loop"
    );
    // The next input from outside tries once more (a conflict the server made up, with no
    // newer version to come, must not block the pod for good), and again not in a loop...
    h.now = t0() + SignedDuration::from_secs(1);
    assert_eq!(on_p0(&h.feed(Input::ActivatorDue)), 1);
    // ...and the version the watch brings sets the gate again.
    h.fleet.conflicts.clear();
    let effects = h.observe();
    assert_eq!(gate_writes(&effects), [("p0", true)], "{effects:?}");
}

// --- decisions taken while writes are on their way

impl Harness {
    /// Feeds one input and keeps the pod writes it asks for on their way: nothing is
    /// applied and no outcome is fed until [`Harness::complete`].
    fn ask(&mut self, input: Input) -> Vec<PodWrite> {
        let (state, effects) = plan(self.state.take().unwrap(), input, self.now);
        self.state = Some(state);
        let writes = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Pod(write) => Some(write.clone()),
                _ => None,
            })
            .collect();
        self.effects.extend(effects);
        writes
    }

    /// The writes come back in this order, each outcome fed as it comes.
    fn complete(&mut self, writes: Vec<PodWrite>) {
        for write in writes {
            let outcome = self.fleet.apply(&write);
            self.feed(Input::Written {
                pod: write.pod.name.to_string(),
                outcome,
            });
        }
    }
}

fn ejected(writes: &[PodWrite]) -> BTreeSet<String> {
    writes
        .iter()
        .filter(|w| matches!(w.change, PodChange::Eject { .. }))
        .map(|w| w.pod.name.to_string())
        .collect()
}

fn names(mask: &[bool], pods: usize) -> Vec<String> {
    (0..pods)
        .filter(|i| mask[*i])
        .map(|i| format!("p{i}"))
        .collect()
}

#[test]
fn an_ejection_on_its_way_counts_as_done_for_the_next_decision() {
    let spec = json!({
        "service": "web",
        "breakers": [
            {"name": "breaker-1", "evaluationPeriod": 5, "customService": "d:80/1", "minPodsAvailableCount": 3},
            {"name": "breaker-2", "evaluationPeriod": 5, "customService": "d:80/2", "minPodsAvailableCount": 3},
        ],
    });
    let mut h = Harness::running(spec, 5);
    let first = h.ask(Input::Findings {
        breaker: "breaker-1".into(),
        result: Ok(detect::custom(&["p0".into(), "p1".into()])),
    });
    assert_eq!(ejected(&first), BTreeSet::from(["p0".into(), "p1".into()]));
    // Before p0 and p1 are out, another breaker finds p2 anomalous: 3 must keep traffic.
    let second = h.ask(Input::Findings {
        breaker: "breaker-2".into(),
        result: Ok(detect::custom(&["p2".into()])),
    });
    assert!(ejected(&second).is_empty(), "{second:?}");
    h.complete(first);
    assert_eq!(h.with_traffic("no"), ["p0", "p1"]);
}

#[test]
fn an_anomaly_on_a_pod_being_adopted_is_judged_once_the_adoption_is_back() {
    let mut h = Harness::running(custom(1, 0, json!(null)), 3);
    h.fleet.pods.insert("p3".into(), pod("p3"));
    let adoption = h.ask(Input::Observed(h.observed()));
    assert_eq!(pod_writes(&h.effects), [("p3", &PodChange::Adopt)]);
    let meanwhile = h.ask(Input::Findings {
        breaker: "faulty".into(),
        result: Ok(detect::custom(&["p3".into()])),
    });
    assert!(meanwhile.is_empty(), "p3 does not serve yet: {meanwhile:?}");
    h.complete(adoption);
    assert_eq!(h.with_traffic("no"), ["p3"]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Two breakers deciding while the first one's ejections are on their way never take
    /// the fleet below its floor, whatever each finds and whenever the writes come back.
    #[test]
    fn decisions_taken_while_ejections_are_on_their_way_keep_the_floor(
        pods in 2usize..10,
        floor in 0u32..10,
        first in proptest::collection::vec(proptest::bool::ANY, 10),
        second in proptest::collection::vec(proptest::bool::ANY, 10),
        observe_between in proptest::bool::ANY,
        reversed in proptest::bool::ANY,
    ) {
        let floor = floor.min(pods as u32);
        let spec = json!({
            "service": "web",
            "breakers": [
                {"name": "breaker-1", "evaluationPeriod": 5, "customService": "d:80/1",
                 "minPodsAvailableCount": floor},
                {"name": "breaker-2", "evaluationPeriod": 5, "customService": "d:80/2",
                 "minPodsAvailableCount": floor},
            ],
        });
        let mut h = Harness::running(spec, pods);
        let mut writes = h.ask(Input::Findings {
            breaker: "breaker-1".into(),
            result: Ok(detect::custom(&names(&first, pods))),
        });
        if observe_between {
            // The watch still shows every pod serving.
            writes.extend(h.ask(Input::Observed(h.observed())));
        }
        let later = h.ask(Input::Findings {
            breaker: "breaker-2".into(),
            result: Ok(detect::custom(&names(&second, pods))),
        });
        let out = ejected(&writes);
        proptest::prop_assert!(ejected(&later).is_disjoint(&out), "a pod ejected twice");
        let on_their_way = out.len() + ejected(&later).len();
        let budget = pods - floor as usize;
        proptest::prop_assert!(
            on_their_way <= budget,
            "{} ejections on their way, {} pods, floor {}", on_their_way, pods, floor
        );
        writes.extend(later);
        if reversed {
            writes.reverse();
        }
        h.complete(writes);
        proptest::prop_assert!(h.with_traffic("no").len() <= budget);
    }

    /// An answer that finds anomalous a pod whose adoption is on its way is acted on once
    /// the adoption is back, as if it had come after it.
    #[test]
    fn anomalies_on_pods_with_writes_on_their_way_are_judged_when_the_writes_are_back(
        adopted in 2usize..6,
        new in 1usize..4,
        mask in proptest::collection::vec(proptest::bool::ANY, 10),
    ) {
        let mut h = Harness::running(custom(1, 0, json!(null)), adopted);
        let total = adopted + new;
        for i in adopted..total {
            h.fleet.pods.insert(format!("p{i}"), pod(&format!("p{i}")));
        }
        let mut writes = h.ask(Input::Observed(h.observed()));
        proptest::prop_assert_eq!(writes.len(), new);
        // p0 is never anomalous, and at least one new pod always is: the floor of 1
        // then never spares anyone.
        let mut anomalous: BTreeSet<String> = (1..total)
            .filter(|i| mask[*i])
            .map(|i| format!("p{i}"))
            .collect();
        anomalous.insert(format!("p{adopted}"));
        let list: Vec<String> = anomalous.iter().cloned().collect();
        writes.extend(h.ask(Input::Findings {
            breaker: "faulty".into(),
            result: Ok(detect::custom(&list)),
        }));
        h.complete(writes);
        let out: BTreeSet<String> = h.with_traffic("no").into_iter().map(String::from).collect();
        proptest::prop_assert_eq!(out, anomalous);
    }
}
