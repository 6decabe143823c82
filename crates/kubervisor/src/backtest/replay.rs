//! The replay: the operator's own per-resource step, [`plan`], driven over history with
//! the clock set to each evaluation instant and to each time the activator is due.
//!
//! The executor is simulated: pod writes are the executor's own JSON Patch operations
//! applied to the simulated pods, so preconditions and marks behave as on a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use kubervisor_api::pod::{MarksIn, NAME_LABEL, TRAFFIC_LABEL, Traffic};
use kubervisor_api::{KubervisorService, ResolvedSpec};
use kubervisor_core::breaker::MinAvailable;
use serde_json::{Value, json};

use super::detector::Replayable;
use super::history::{History, instant_count};
use crate::effects::{Written, adopt_ops, eject_ops, forget_ops, from_ejected_ops, release_ops};
use crate::index::{KvsEntry, SlimPod, SlimService};
use crate::labels::Labels;
use crate::plan::{DecisionKind, Effect, FINALIZER, Input, Note, Observed, PodChange, State, plan};

/// The label the simulated Service selects its pods by.
const FLEET_LABEL: &str = "kubervisor.k8s.io/backtest";
/// Activator runs at most at one instant, against a rule that keeps asking for more.
const ACTIVATIONS_PER_INSTANT: usize = 4;

/// What the replay did to a pod, or to a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Eject,
    Activate,
    Pause,
    Kill,
    Spare,
    Panic,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Eject => "eject",
            Action::Activate => "activate",
            Action::Pause => "pause",
            Action::Kill => "kill",
            Action::Spare => "spare",
            Action::Panic => "panic",
        }
    }
}

/// One decision, at the instant it was taken.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Decision {
    pub time: Timestamp,
    pub breaker: String,
    /// `None` for decisions on the breaker itself (panic).
    pub pod: Option<String>,
    pub action: Action,
    pub reason: String,
}

/// A breaker ready to replay: its detector and what its query returned.
pub struct BreakerHistory {
    pub name: String,
    pub detector: Box<dyn Replayable>,
    pub history: History,
}

/// How the fleet evolved, for the summary and the charts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Replayed {
    pub decisions: Vec<Decision>,
    /// Evaluations run, per breaker.
    pub evaluations: BTreeMap<String, u64>,
    /// Every pod that appeared, with the intervals it spent without traffic.
    pub out: BTreeMap<String, Vec<(Timestamp, Timestamp)>>,
    /// The most pods without traffic at once, and when first.
    pub max_out: (usize, Option<Timestamp>),
    /// The fewest pods with traffic, the floor then, and when first.
    pub min_with_traffic: Option<(usize, usize, Timestamp)>,
    /// Per breaker, per pod: the detector's quantity at each evaluation (with charts only).
    pub quantities: BTreeMap<String, BTreeMap<String, Vec<(Timestamp, f64)>>>,
}

/// Replays `breakers` of `spec` (already restricted to the replayable ones) over [start, end].
pub fn replay(
    kvs: &KubervisorService,
    spec: &ResolvedSpec,
    breakers: &[BreakerHistory],
    (start, end): (Timestamp, Timestamp),
    fleet_size: Option<usize>,
    charts: bool,
) -> Replayed {
    let mut fleet = Fleet::new(kvs, spec, breakers, fleet_size);
    let mut sim = Sim {
        state: State::new(&fleet.namespace, &fleet.name),
        out: Replayed::default(),
        out_since: BTreeMap::new(),
    };
    // Every evaluation instant of every breaker, in time order, breakers in spec order.
    let mut instants: BTreeMap<Timestamp, Vec<usize>> = BTreeMap::new();
    for (b, breaker) in breakers.iter().enumerate() {
        let period = spec
            .breakers
            .iter()
            .find(|r| r.name == breaker.name)
            .map_or(breaker.history.step, |r| r.evaluation_period);
        for i in 0..instant_count(start, end, period) {
            let offset = SignedDuration::try_from(period * i as u32).unwrap_or_default();
            instants.entry(start + offset).or_default().push(b);
        }
    }
    let mut now = start;
    sim.observe(&mut fleet, now);
    let mut activations_at = (now, 0);
    let mut instants = instants.into_iter().peekable();
    loop {
        let next_evaluation = instants.peek().map(|(t, _)| *t);
        let due = sim
            .state
            .activator_due()
            .map(|due| due.max(now))
            .filter(|due| *due <= end && next_evaluation.is_none_or(|next| *due <= next))
            .filter(|due| *due != activations_at.0 || activations_at.1 < ACTIVATIONS_PER_INSTANT);
        if let Some(due) = due {
            now = due;
            activations_at = if activations_at.0 == now {
                (now, activations_at.1 + 1)
            } else {
                (now, 1)
            };
            sim.step(&mut fleet, Input::ActivatorDue, now);
            sim.measure(&fleet, spec, now);
            continue;
        }
        let Some((time, evaluations)) = instants.next() else {
            break;
        };
        now = time;
        if fleet.move_to(now) {
            sim.observe(&mut fleet, now);
        }
        for b in evaluations {
            let breaker = &breakers[b];
            let findings = breaker.detector.judge(&breaker.history, now);
            *sim.out.evaluations.entry(breaker.name.clone()).or_default() += 1;
            if charts {
                let per_pod = sim.out.quantities.entry(breaker.name.clone()).or_default();
                for (pod, value) in breaker.detector.quantity(&breaker.history, now) {
                    per_pod.entry(pod).or_default().push((now, value));
                }
            }
            let input = Input::Findings {
                breaker: breaker.name.clone(),
                result: Ok(findings),
            };
            sim.step(&mut fleet, input, now);
        }
        sim.measure(&fleet, spec, now);
    }
    let still_out: Vec<(String, Timestamp)> =
        std::mem::take(&mut sim.out_since).into_iter().collect();
    for (pod, since) in still_out {
        sim.out.out.entry(pod).or_default().push((since, end));
    }
    sim.out
}

/// The simulated pods: who exists at each instant, and their labels.
struct Fleet {
    namespace: String,
    name: String,
    kvs: KvsEntry,
    service: Arc<SlimService>,
    /// Each pod's first and last instant in the data (all of the run for unreported pods).
    lifetimes: BTreeMap<String, (Timestamp, Timestamp)>,
    /// The pods present now.
    pods: BTreeMap<String, Arc<SlimPod>>,
    /// Pods the activator killed: their later samples are of a pod that no longer exists.
    killed: BTreeSet<String>,
    version: u64,
}

impl Fleet {
    fn new(
        kvs: &KubervisorService,
        spec: &ResolvedSpec,
        breakers: &[BreakerHistory],
        fleet_size: Option<usize>,
    ) -> Fleet {
        let namespace = kvs
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = kvs.metadata.name.clone().unwrap_or_default();
        let mut object = kvs.clone();
        // Already set up, as the operator leaves it: the replay starts with the breakers running.
        object.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
        object.metadata.resource_version = Some("1".into());
        let mut lifetimes: BTreeMap<String, (Timestamp, Timestamp)> = BTreeMap::new();
        let mut first_instant: Option<Timestamp> = None;
        let mut last_instant: Option<Timestamp> = None;
        for breaker in breakers {
            let history = &breaker.history;
            for (i, samples) in history.instants.iter().enumerate() {
                let time = history.time(i);
                first_instant = Some(first_instant.map_or(time, |t| t.min(time)));
                last_instant = Some(last_instant.map_or(time, |t| t.max(time)));
                for &(series, _) in samples {
                    let pod = &history.keys[series].pod;
                    let life = lifetimes.entry(pod.clone()).or_insert((time, time));
                    life.0 = life.0.min(time);
                    life.1 = life.1.max(time);
                }
            }
        }
        if let (Some(size), Some(first), Some(last)) = (fleet_size, first_instant, last_instant) {
            for n in 1..=size.saturating_sub(lifetimes.len()) {
                lifetimes.insert(format!("unreported-{n}"), (first, last));
            }
        }
        Fleet {
            namespace: namespace.clone(),
            name,
            kvs: KvsEntry {
                object: Arc::new(object),
                decode_error: None,
            },
            service: Arc::new(SlimService {
                namespace,
                name: spec.service.clone(),
                selector: Some([(FLEET_LABEL, "yes")].into_iter().collect()),
            }),
            lifetimes,
            pods: BTreeMap::new(),
            killed: BTreeSet::new(),
            version: 1,
        }
    }

    /// Pods whose data starts join with traffic; pods whose data ended are gone.
    /// Whether the fleet changed.
    fn move_to(&mut self, now: Timestamp) -> bool {
        let before = self.pods.len();
        self.pods.retain(|name, _| {
            self.lifetimes
                .get(name)
                .is_some_and(|(_, last)| *last >= now)
        });
        let mut changed = self.pods.len() != before;
        for (pod, (first, last)) in &self.lifetimes {
            if *first <= now
                && now <= *last
                && !self.pods.contains_key(pod)
                && !self.killed.contains(pod)
            {
                self.version += 1;
                let labels = [
                    (FLEET_LABEL, "yes"),
                    (NAME_LABEL, self.name.as_str()),
                    (TRAFFIC_LABEL, Traffic::Yes.as_str()),
                ]
                .into_iter()
                .collect();
                self.pods.insert(
                    pod.clone(),
                    Arc::new(SlimPod {
                        namespace: self.namespace.as_str().into(),
                        name: pod.as_str().into(),
                        uid: pod.clone(),
                        resource_version: self.version.to_string(),
                        labels,
                        annotations: Labels::default(),
                        has_annotations: false,
                        running: true,
                        ready: true,
                        terminating: false,
                        containers_ready: true,
                        // Whatever the traffic control mode: the replay judges every pod.
                        traffic_gate: true,
                        traffic_condition: Some(true),
                    }),
                );
                changed = true;
            }
        }
        changed
    }

    fn observed(&self) -> Observed {
        let pods: Vec<Arc<SlimPod>> = self.pods.values().cloned().collect();
        Observed {
            kvs: Some(self.kvs.clone()),
            service: Some(self.service.clone()),
            managed: pods.clone(),
            labelled: pods,
        }
    }

    /// Carries out a pod write the way the executor does: its JSON Patch, on the pod as it is.
    fn write(&mut self, pod: &SlimPod, change: &PodChange, marks_in: MarksIn) -> Written {
        let Some(current) = self.pods.get(&*pod.name).cloned() else {
            return Written::Stale(format!("pod {} is gone", pod.name));
        };
        if current.resource_version != pod.resource_version
            && matches!(change, PodChange::Adopt | PodChange::Release)
        {
            return Written::Stale(format!("pod {} changed", pod.name));
        }
        let ops = match change {
            PodChange::Adopt => adopt_ops(pod, marks_in, &self.name),
            PodChange::Release => release_ops(pod),
            PodChange::Eject {
                breaker,
                retry_count,
                at,
            } => eject_ops(pod, marks_in, breaker, *retry_count, *at),
            PodChange::Reinstate { to } => from_ejected_ops(pod, marks_in, *to),
            PodChange::ForgetRetries => forget_ops(pod, marks_in),
            // Readiness-gate mode: the condition follows the state; in history every pod
            // served anyway, so nothing else changes.
            PodChange::SetGate(serve) => {
                self.version += 1;
                let mut after = current.as_ref().clone();
                after.traffic_condition = Some(*serve);
                after.resource_version = self.version.to_string();
                self.pods
                    .insert(pod.name.to_string(), Arc::new(after.clone()));
                return Written::Done(Some(after));
            }
            PodChange::Kill(_) => {
                self.pods.remove(&*pod.name);
                self.killed.insert(pod.name.to_string());
                return Written::Done(None);
            }
        };
        let mut doc = json!({"metadata": {
            "resourceVersion": current.resource_version,
            "labels": current.labels,
        }});
        if current.has_annotations {
            doc["metadata"]["annotations"] = json!(current.annotations);
        }
        if let Err(e) = json_patch::patch(&mut doc, &ops) {
            return Written::Stale(format!("pod {}: {e}", pod.name));
        }
        let strings = |value: &Value| -> Labels {
            value
                .as_object()
                .map(|map| {
                    map.iter()
                        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
                        .collect()
                })
                .unwrap_or_default()
        };
        self.version += 1;
        let annotations = &doc["metadata"]["annotations"];
        let after = SlimPod {
            resource_version: self.version.to_string(),
            labels: strings(&doc["metadata"]["labels"]),
            annotations: strings(annotations),
            has_annotations: annotations.is_object(),
            ..(*current).clone()
        };
        self.pods
            .insert(pod.name.to_string(), Arc::new(after.clone()));
        Written::Done(Some(after))
    }
}

struct Sim {
    state: State,
    out: Replayed,
    /// Pods without traffic now, since when.
    out_since: BTreeMap<String, Timestamp>,
}

impl Sim {
    fn observe(&mut self, fleet: &mut Fleet, now: Timestamp) {
        let observed = fleet.observed();
        self.step(fleet, Input::Observed(observed), now);
    }

    /// Feeds one input, then carries out its effects until the step asks for nothing more.
    fn step(&mut self, fleet: &mut Fleet, input: Input, now: Timestamp) {
        let mut inputs = vec![input];
        let mut wrote = false;
        while let Some(input) = inputs.pop() {
            let (state, effects) = plan(std::mem::take(&mut self.state), input, now);
            self.state = state;
            let mut counted: Option<(String, DecisionKind)> = None;
            for effect in effects {
                match effect {
                    Effect::Pod(write) => {
                        let outcome = fleet.write(&write.pod, &write.change, write.marks_in);
                        wrote = true;
                        inputs.insert(
                            0,
                            Input::Written {
                                pod: write.pod.name.to_string(),
                                outcome,
                            },
                        );
                    }
                    Effect::CountDecision { breaker, kind, .. } => counted = Some((breaker, kind)),
                    Effect::Publish(report) => {
                        self.record(report.pod.as_deref(), report.note, counted.take(), now)
                    }
                    _ => {}
                }
            }
            if inputs.is_empty() && wrote {
                wrote = false;
                inputs.push(Input::Observed(fleet.observed()));
            }
        }
    }

    fn record(
        &mut self,
        pod: Option<&SlimPod>,
        note: Note,
        counted: Option<(String, DecisionKind)>,
        now: Timestamp,
    ) {
        let reason = note.to_string();
        let mut push = |breaker: String, pod: Option<String>, action: Action, reason: String| {
            self.out.decisions.push(Decision {
                time: now,
                breaker,
                pod,
                action,
                reason,
            })
        };
        match note {
            Note::Ejected(_) | Note::Reinstated(_) | Note::FloorRestored(_) => {
                let Some((breaker, kind)) = counted else {
                    return;
                };
                let action = match kind {
                    DecisionKind::Break => Action::Eject,
                    DecisionKind::Activate | DecisionKind::Restore => Action::Activate,
                    DecisionKind::Pause => Action::Pause,
                    DecisionKind::Kill => Action::Kill,
                };
                push(breaker, pod.map(|p| p.name.to_string()), action, reason);
            }
            Note::Floor { breaker, pods, .. } => {
                for spared in pods {
                    push(breaker.clone(), Some(spared), Action::Spare, reason.clone());
                }
            }
            Note::Panic { breaker, .. } | Note::PanicEnded { breaker } => {
                push(breaker, None, Action::Panic, reason);
            }
            _ => {}
        }
    }

    /// Time out of traffic, pods out at once, pods with traffic against the floor.
    fn measure(&mut self, fleet: &Fleet, spec: &ResolvedSpec, now: Timestamp) {
        let mut out_now = 0;
        let mut with_traffic = 0;
        let mut ready = 0;
        for (name, pod) in &fleet.pods {
            // The simulated pods' marks are always well formed: the label says it all,
            // without parsing every mark of every pod at every instant.
            let serving_capable = pod.running && pod.ready && !pod.terminating;
            ready += usize::from(serving_capable);
            let traffic = pod.labels.get(TRAFFIC_LABEL);
            if serving_capable && traffic == Some(Traffic::Yes.as_str()) {
                with_traffic += 1;
                if let Some(since) = self.out_since.remove(name) {
                    self.out
                        .out
                        .entry(name.clone())
                        .or_default()
                        .push((since, now));
                }
            } else {
                out_now += 1;
                self.out_since.entry(name.clone()).or_insert(now);
            }
            if !self.out.out.contains_key(name) {
                self.out.out.insert(name.clone(), Vec::new());
            }
        }
        // Gone or killed while out: out until then.
        let gone: Vec<String> = self
            .out_since
            .keys()
            .filter(|name| !fleet.pods.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(since) = self.out_since.remove(&name) {
                self.out.out.entry(name).or_default().push((since, now));
            }
        }
        if out_now > self.out.max_out.0 {
            self.out.max_out = (out_now, Some(now));
        }
        let floor = spec
            .breakers
            .iter()
            .map(|b| {
                MinAvailable {
                    count: b.min_pods_available_count,
                    ratio_percent: b.min_pods_available_ratio,
                }
                .floor(ready)
            })
            .max()
            .unwrap_or(0);
        if self
            .out
            .min_with_traffic
            .is_none_or(|(min, _, _)| with_traffic < min)
        {
            self.out.min_with_traffic = Some((with_traffic, floor, now));
        }
    }
}
