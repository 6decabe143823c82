//! The step of one KubervisorService: everything its task decides, as a pure function of
//! what the index shows, what the sources answered, what the writes returned and the clock.
//!
//! `plan(state, input, now) -> (state, effects)`: the task feeds inputs and carries out
//! the effects; nothing here does I/O, so every rule is tested by feeding inputs and
//! reading effects, without a runtime or an API server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kubervisor_api::pod::{
    BREAK_AT_ANNOTATION, MarksIn, NAME_LABEL, RETRY_COUNT_ANNOTATION, STRATEGY_LABEL,
    TRAFFIC_CONDITION, TRAFFIC_LABEL, Traffic, format_break_at,
};
use kubervisor_api::{
    BreakerStatus, FleetStatisticStatus, KillMethod, KubervisorService, KubervisorServiceCondition,
    KubervisorServiceStatus, PodCountStatus, PodScoreStatus, ResolvedBreaker, ResolvedSpec,
    TrafficControl,
};
use kubervisor_core::PodView;
use kubervisor_core::activator::{
    Action, Activation, Forgotten, earliest_due, forget_retries, next_forget, plan_activations,
};
use kubervisor_core::breaker::{
    Ejection, EjectionPlan, Limits, MinAvailable, Panic, plan_ejections,
};
use kubervisor_core::detect::{Findings, FleetStatistic};
use kubervisor_core::safety::{Restoration, restore_floor};
use kubervisor_core::status::{PodCounts, count};

use crate::effects::Written;
use crate::index::{KvsEntry, SlimPod, SlimService};
use crate::labels::Labels;
use crate::source::SourceError;
use crate::telemetry::BreakerState;

/// The finalizer that makes Kubervisor hand pods back even when the resource is deleted
/// while the operator is down.
pub const FINALIZER: &str = "kubervisor.k8s.io/cleanup";

/// What the index shows of one KubervisorService, at one instant.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// `None` once the resource is gone.
    pub kvs: Option<KvsEntry>,
    /// The Service named by the spec, if it exists.
    pub service: Option<Arc<SlimService>>,
    /// The pods the Service's selector picks (without the traffic requirement) that no
    /// other KubervisorService claims.
    pub managed: Vec<Arc<SlimPod>>,
    /// The pods of the namespace labelled `kubervisor/name=<this resource>`.
    pub labelled: Vec<Arc<SlimPod>>,
}

/// What the task feeds the step.
#[derive(Debug)]
pub enum Input {
    /// The index changed, or it is time to look again.
    Observed(Observed),
    /// A breaker's source answered.
    Findings {
        breaker: String,
        result: Result<Findings, SourceError>,
    },
    /// The activator's next due time has come.
    ActivatorDue,
    /// A pod write the step asked for came back.
    Written { pod: String, outcome: Written },
}

/// A change to one pod, with the pod as it was read: the executor turns it into a write
/// whose precondition is that the pod is still as read.
#[derive(Clone, Debug, PartialEq)]
pub struct PodWrite {
    pub pod: Arc<SlimPod>,
    pub change: PodChange,
    /// Where the pod's traffic state and breaker are written.
    pub marks_in: MarksIn,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PodChange {
    /// Label a newly managed pod `traffic=yes` (if unlabelled) and `name=<resource>`.
    Adopt,
    /// Hand the pod back: traffic restored, every other Kubervisor mark removed.
    Release,
    /// `traffic` from `yes` to `no`, recording the breaker, the time and the count.
    Eject {
        breaker: String,
        retry_count: u32,
        at: Timestamp,
    },
    /// From `no` to `to`, only if it is still the same ejection.
    Reinstate { to: Traffic },
    /// Reset `breaker/retryCount` to 0, only if the pod still serves since the same ejection.
    ForgetRetries,
    /// Evict or delete the pod so its controller replaces it.
    Kill(KillMethod),
    /// Readiness-gate mode: set the pod condition `kubervisor.k8s.io/traffic` to `True`
    /// or `False`, mirroring the traffic state.
    SetGate(bool),
}

/// What the executor does.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Pod(PodWrite),
    /// Publish an event on the resource, and on the pod when it names one.
    Publish(Report),
    /// Write the status through the status subresource.
    Status(Box<KubervisorServiceStatus>),
    /// Add the finalizer to this version of the resource.
    AddFinalizer(Arc<KubervisorService>),
    /// Remove the finalizer: every pod got its traffic back.
    RemoveFinalizer(Arc<KubervisorService>),
    /// Count one decision in `kubervisor_breaker_count_total`.
    CountDecision {
        breaker: String,
        pod: String,
        kind: DecisionKind,
        dry_run: bool,
    },
    /// Set the pod gauges.
    PodCounts(PodCounts),
    /// Set a breaker's gauges: what its last evaluation found.
    BreakerState {
        breaker: String,
        state: BreakerState,
    },
}

/// The kinds of decisions on a pod, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DecisionKind {
    Break,
    Activate,
    Pause,
    Kill,
    /// Given back early to restore the floor.
    Restore,
}

impl DecisionKind {
    /// The `type` label of `kubervisor_breaker_count_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Break => "break",
            DecisionKind::Activate => "activate",
            DecisionKind::Pause => "pause",
            DecisionKind::Kill => "kill",
            DecisionKind::Restore => "restore",
        }
    }

    fn of(action: Action) -> DecisionKind {
        match action {
            Action::Activate => DecisionKind::Activate,
            Action::Pause => DecisionKind::Pause,
            Action::Kill => DecisionKind::Kill,
        }
    }
}

/// An event to publish: what it is about, rendered to text by the executor.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Also published on this pod.
    pub pod: Option<Arc<SlimPod>>,
    pub note: Note,
}

/// What an event says, typed until it is rendered.
#[derive(Clone, Debug, PartialEq)]
pub enum Note {
    Ejected(Ejection),
    Reinstated(Activation),
    /// A decision of a dry run, not carried out.
    DryRunEject(Ejection),
    DryRunReinstate(Activation),
    /// Anomalous pods keep traffic because of the floor.
    Floor {
        breaker: String,
        pods: Vec<String>,
        min_available: usize,
        ready_managed: usize,
    },
    SourceError {
        breaker: String,
        message: String,
    },
    /// Outside losses broke the floor: an ejected pod came back early.
    FloorRestored(Restoration),
    DryRunRestore(Restoration),
    /// A re-activated pod served long enough: its past ejections are forgotten.
    RetriesForgotten(Forgotten),
    /// Readiness-gate mode: a managed pod does not declare the gate, so it is left alone.
    NoReadinessGate {
        pod: String,
    },
    /// A PodDisruptionBudget refused a kill: the pod stays out and the kill is tried again.
    KillBlocked {
        activation: Activation,
        message: String,
    },
    /// A breaker entered panic, or left it.
    Panic {
        breaker: String,
        panic: Panic,
    },
    PanicEnded {
        breaker: String,
    },
    /// The resource cannot run: its `Ready` condition says why.
    NotRunning {
        reason: StopReason,
        message: String,
    },
}

/// Why a resource does not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopReason {
    InvalidSpec,
    ServiceNotFound,
    ServiceHasNoSelector,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::InvalidSpec => "InvalidSpec",
            StopReason::ServiceNotFound => "ServiceNotFound",
            StopReason::ServiceHasNoSelector => "ServiceHasNoSelector",
        }
    }
}

impl Note {
    /// The event's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Note::Ejected(_) => "PodEjected",
            Note::Reinstated(a) => match a.action {
                Action::Activate => "PodActivated",
                Action::Pause => "PodPaused",
                Action::Kill => "PodKilled",
            },
            Note::DryRunEject(_) => "DryRunEject",
            Note::DryRunReinstate(a) => match a.action {
                Action::Activate => "DryRunActivate",
                Action::Pause => "DryRunPause",
                Action::Kill => "DryRunKill",
            },
            Note::Floor { .. } => "MinimumAvailable",
            Note::SourceError { .. } => "SourceError",
            Note::FloorRestored(_) => "FloorRestored",
            Note::DryRunRestore(_) => "DryRunFloorRestore",
            Note::RetriesForgotten(_) => "RetriesForgotten",
            Note::KillBlocked { .. } => "KillBlocked",
            Note::NoReadinessGate { .. } => "NoReadinessGate",
            Note::Panic { .. } => "Panic",
            Note::PanicEnded { .. } => "PanicEnded",
            Note::NotRunning { reason, .. } => reason.as_str(),
        }
    }

    /// The event's action.
    pub fn action(&self) -> &'static str {
        match self {
            Note::Ejected(_) | Note::DryRunEject(_) | Note::Floor { .. } => "Eject",
            Note::Reinstated(a) | Note::DryRunReinstate(a) => match a.action {
                Action::Activate => "Activate",
                Action::Pause => "Pause",
                Action::Kill => "Kill",
            },
            Note::SourceError { .. } | Note::Panic { .. } | Note::PanicEnded { .. } => "Evaluate",
            Note::FloorRestored(_) | Note::DryRunRestore(_) => "Activate",
            Note::RetriesForgotten(_) => "Forget",
            Note::KillBlocked { .. } => "Kill",
            Note::NotRunning { .. } | Note::NoReadinessGate { .. } => "Reconcile",
        }
    }

    /// Whether the event is a warning.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Note::Floor { .. }
                | Note::SourceError { .. }
                | Note::NotRunning { .. }
                | Note::FloorRestored(_)
                | Note::KillBlocked { .. }
                | Note::NoReadinessGate { .. }
                | Note::Panic { .. }
        ) || matches!(self, Note::Reinstated(a) if a.action == Action::Kill || a.reason.is_clock_ahead())
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::Ejected(e) => write!(f, "{e}"),
            Note::Reinstated(a) => write!(f, "{a}"),
            Note::DryRunEject(e) => write!(f, "dry run: {e}"),
            Note::DryRunReinstate(a) => write!(f, "dry run: {a}"),
            Note::Floor {
                breaker,
                pods,
                min_available,
                ready_managed,
            } => write!(
                f,
                "breaker {breaker}: {} anomalous pod(s) keep traffic ({}): {min_available} of {ready_managed} pods must keep traffic",
                pods.len(),
                pods.join(", ")
            ),
            Note::SourceError { breaker, message } => {
                write!(f, "breaker {breaker}: {message}; no pod is ejected")
            }
            Note::FloorRestored(r) => write!(f, "{r}"),
            Note::DryRunRestore(r) => write!(f, "dry run: {r}"),
            Note::RetriesForgotten(forgotten) => write!(f, "{forgotten}"),
            Note::KillBlocked {
                activation,
                message,
            } => write!(
                f,
                "{activation}, but a PodDisruptionBudget does not allow it now ({message}): the pod stays out of traffic and the kill is tried again every {}s",
                KILL_RETRY.as_secs()
            ),
            Note::Panic { breaker, panic } => write!(f, "breaker {breaker} in panic: {panic}"),
            Note::PanicEnded { breaker } => {
                write!(f, "breaker {breaker} left panic: it ejects again")
            }
            Note::NotRunning { message, .. } => f.write_str(message),
            Note::NoReadinessGate { pod } => write!(
                f,
                "pod {pod} does not declare the readiness gate {TRAFFIC_CONDITION} that trafficControl readinessGate needs: it is left alone, never ejected"
            ),
        }
    }
}

/// Where the resource stands.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Phase {
    /// Not observed yet.
    #[default]
    Starting,
    /// Breakers and activator run on this spec, over the pods this selector picks.
    Running {
        spec: Arc<ResolvedSpec>,
        selector: Labels,
    },
    /// Nothing runs; the status says why.
    Stopped(StopReason),
    /// Being deleted: pods are handed back, then the finalizer goes.
    Deleting,
    /// Gone: the task ends.
    Finished,
}

/// A write the index has not seen yet: decisions use it until the watch catches up.
#[derive(Clone, Debug)]
struct Pending {
    /// The resourceVersions the index may show while the write is on its way: the one
    /// before it, and, for writes made on top of writes not shown yet, the one before the
    /// first of them and those between (a relist may show any of them).
    before: Vec<String>,
    /// The pod after the write; `None` once deleted.
    after: Option<Arc<SlimPod>>,
}

/// A pod write asked for and not yet come back.
#[derive(Clone, Debug)]
struct Awaiting {
    /// The pod as the write read it.
    before: Arc<SlimPod>,
    cause: Cause,
    /// An ejection on its way: until it comes back, decisions see the pod as ejected
    /// (`breaker`, `retry_count`, `at`), so that no decision taken meanwhile counts it as
    /// serving against the floor.
    ejecting: Option<(String, u32, Timestamp)>,
}

/// Why a pod write was asked for, to report it once it is done.
#[derive(Clone, Debug)]
enum Cause {
    Adopt,
    Release,
    Eject(Ejection),
    Reinstate(Activation, String),
    Restore(Restoration),
    Forget(Forgotten),
    /// The gate condition follows the traffic state.
    Gate,
}

/// How long a kill refused by a PodDisruptionBudget waits before it is tried again.
pub const KILL_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// A status whose only change is in its numbers (a fleet statistic, the scores of the
/// anomalous pods) is rewritten at most this often. Fed by live metrics, those numbers move
/// at nearly every evaluation, and one status write per breaker per evaluation is load on
/// the API server that tells nobody anything new: the same figures are in the metrics.
pub const STATUS_NUMBERS_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// Status writes in flight followed at most: the index may show any of them on the way.
const STATUS_WRITES_FOLLOWED: usize = 8;

/// Everything one KubervisorService's task knows between two inputs.
#[derive(Clone, Debug, Default)]
pub struct State {
    namespace: String,
    name: String,
    phase: Phase,
    observed: Observed,
    /// Writes done that the index has not shown yet, by pod.
    pending: HashMap<String, Pending>,
    /// Writes asked for and not yet come back, by pod. Decisions may be taken while they
    /// are on their way: see [`State::overlay`].
    awaiting: HashMap<String, Awaiting>,
    /// Answers that named as anomalous a pod with a write on its way, by breaker: judged
    /// again once the writes are back, as if they had come after them.
    held: BTreeMap<String, Findings>,
    /// Pods a write found changed since they were read, with the version it was made on:
    /// the outcomes of writes do not bring a write on that version again (that would meet
    /// the same conflict as fast as the API answers); the next input from outside does.
    stale: HashMap<String, String>,
    /// Last error of each breaker's source.
    source_errors: BTreeMap<String, String>,
    /// Breakers in panic, with the numbers of the evaluation that entered it.
    panics: BTreeMap<String, Panic>,
    /// Dry-run decisions already reported, so each is reported once while it holds.
    dry_run_reported: BTreeSet<(String, DecisionKind)>,
    /// Pods each breaker last left in traffic because of the floor, reported when it changes.
    floor_notes: BTreeMap<String, Vec<String>>,
    /// The last reason the resource stopped for, reported once while it holds.
    stop_note: Option<(StopReason, String)>,
    /// The status last written, and the statuses the index may show while that write is on
    /// its way (the one before the first write in flight, and the writes since), all
    /// without probe times.
    status_written: Option<(KubervisorServiceStatus, Vec<KubervisorServiceStatus>)>,
    /// When the status was last asked for.
    status_at: Option<Timestamp>,
    /// A status change held back (see [`STATUS_NUMBERS_REFRESH`]) is written at this time.
    status_held_until: Option<Timestamp>,
    /// When the activator has something to do next (possibly already past).
    activator_due: Option<Timestamp>,
    /// The status may have changed: computed once the writes under way came back.
    status_dirty: bool,
    /// The finalizer change asked for, and the resourceVersion it was asked on.
    finalizer_asked: Option<String>,
    /// Each breaker's last evaluation as the status shows it, by breaker.
    /// A few per resource: a vector, not a map whose nodes hold room for eleven.
    breaker_results: Vec<BreakerStatus>,
    /// Whether `breaker_results` was taken over from the stored status once.
    breaker_results_read: bool,
    /// Pods whose kill a PodDisruptionBudget refused (reported once), and when to try again.
    kill_blocked: BTreeMap<String, Timestamp>,
    /// How pods are taken out of traffic, from the last spec that resolved.
    control: TrafficControl,
    /// Readiness-gate mode: managed pods without the gate, reported once each.
    gateless: BTreeSet<String>,
    /// Changes whenever `pending` does, so that [`Fleet`] knows when to build again.
    pending_generation: u64,
    /// The fleet as decisions see it in this step.
    fleet: Option<Arc<Fleet>>,
    /// The last resource version resolved and what it resolved to: a resync finds the same
    /// object, which is then not resolved again.
    resolved: Option<(Arc<KubervisorService>, Resolved)>,
    /// The pod counts last given to the metrics.
    counts_shown: Option<PodCounts>,
}

/// A resource's spec resolved, or why it cannot be.
type Resolved = Result<Arc<ResolvedSpec>, String>;

/// The managed pods as decisions must see them (see [`State::pods`]) and their views,
/// built once in a step for every rule that looks at the whole fleet (the breaker or the
/// activator, the status, the next activation), and again only when the writes pending
/// change.
#[derive(Debug)]
struct Fleet {
    /// What it was built from: the managed pods observed (compared by identity), the
    /// writes pending, and the way traffic is read.
    observed: Vec<Arc<SlimPod>>,
    pending_generation: u64,
    dry_run: bool,
    control: TrafficControl,
    /// In name order.
    pods: Vec<Arc<SlimPod>>,
    views: Vec<PodView>,
}

impl Fleet {
    fn built_from(&self, state: &State, dry_run: bool) -> bool {
        self.pending_generation == state.pending_generation
            && self.dry_run == dry_run
            && self.control == state.control
            && self.observed.len() == state.observed.managed.len()
            && self
                .observed
                .iter()
                .zip(&state.observed.managed)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    fn pod(&self, name: &str) -> Option<&Arc<SlimPod>> {
        self.pods
            .binary_search_by(|p| (*p.name).cmp(name))
            .ok()
            .map(|i| &self.pods[i])
    }
}

/// One step: the state after `input` at `now`, and what to do.
pub fn plan(mut state: State, input: Input, now: Timestamp) -> (State, Vec<Effect>) {
    let mut effects = Vec::new();
    state.step(input, now, &mut effects);
    (state, effects)
}

impl State {
    pub fn new(namespace: &str, name: &str) -> State {
        State {
            namespace: namespace.to_string(),
            name: name.to_string(),
            ..State::default()
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The spec the breakers run, while running.
    pub fn running_spec(&self) -> Option<&Arc<ResolvedSpec>> {
        match &self.phase {
            Phase::Running { spec, .. } => Some(spec),
            _ => None,
        }
    }

    /// The resource as last observed.
    pub fn resource(&self) -> Option<&Arc<KubervisorService>> {
        self.observed.kvs.as_ref().map(|entry| &entry.object)
    }

    /// When the activator must look again; `None` while no pod is out of traffic.
    pub fn activator_due(&self) -> Option<Timestamp> {
        self.activator_due
    }

    fn step(&mut self, input: Input, now: Timestamp, out: &mut Vec<Effect>) {
        if !matches!(input, Input::Written { .. }) {
            self.stale.clear();
        }
        match input {
            Input::Observed(observed) => {
                self.observed = observed;
                self.forget_shown_writes();
                self.reconcile(now, out);
            }
            Input::Findings { breaker, result } => self.evaluate(&breaker, result, now, out),
            Input::ActivatorDue => self.activate(now, out),
            Input::Written { pod, outcome } => self.written(&pod, outcome, now, out),
        }
        self.sync_gates(out);
        if self.status_held_until.is_some_and(|at| now >= at) {
            self.status_dirty = true;
        }
        // The rest looks at the whole fleet: once per batch of writes, not once per write.
        if self.awaiting.is_empty() {
            for (breaker, findings) in std::mem::take(&mut self.held) {
                self.evaluate(&breaker, Ok(findings), now, out);
            }
        }
        if self.awaiting.is_empty() {
            if std::mem::take(&mut self.status_dirty) {
                self.write_status(now, out);
            }
            if self.phase == Phase::Deleting {
                self.remove_finalizer_when_done(out);
            }
            self.activator_due = self.next_activation(now);
        }
        // Kept for one step only: across steps it would hold a copy of every pod's marks
        // (about 2 MiB at 10,000 pods) to save one build per evaluation.
        self.fleet = None;
    }

    /// Works out the phase from what is observed, keeps pods adopted and the status true.
    fn reconcile(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let Some(entry) = self.observed.kvs.clone() else {
            self.phase = Phase::Finished;
            return;
        };
        let kvs = entry.object.clone();
        if kvs.metadata.deletion_timestamp.is_some() {
            self.phase = Phase::Deleting;
            self.clean_up(&kvs, out);
            return;
        }
        if !kvs.finalizers().iter().any(|f| f == FINALIZER) && self.ask_finalizer_change(&kvs) {
            out.push(Effect::AddFinalizer(kvs.clone()));
        }
        let spec = match self.resolve(&entry) {
            Ok(spec) => spec,
            Err(message) => return self.stop(StopReason::InvalidSpec, message, now, out),
        };
        self.control = spec.traffic_control;
        let Some(service) = self.observed.service.clone() else {
            let message = format!("Service {}/{} not found", self.namespace, spec.service);
            return self.stop(StopReason::ServiceNotFound, message, now, out);
        };
        let Some(selector) = service.managed_selector() else {
            let message = format!(
                "Service {}/{} selects no pods besides {TRAFFIC_LABEL}: Kubervisor cannot tell which pods it guards",
                self.namespace, spec.service
            );
            return self.stop(StopReason::ServiceHasNoSelector, message, now, out);
        };
        // A breaker removed from the spec no longer speaks for the resource.
        self.source_errors
            .retain(|name, _| spec.breakers.iter().any(|b| b.name == *name));
        self.floor_notes
            .retain(|name, _| spec.breakers.iter().any(|b| b.name == *name));
        self.panics
            .retain(|name, _| spec.breakers.iter().any(|b| b.name == *name));
        if !std::mem::replace(&mut self.breaker_results_read, true) {
            // After a restart, what the status already says needs no rewrite.
            let stored = kvs.status.as_ref().map(|s| s.breakers.clone());
            self.breaker_results = stored.unwrap_or_default();
        }
        self.breaker_results
            .retain(|r| spec.breakers.iter().any(|b| b.name == r.name));
        self.stop_note = None;
        let dry_run = spec.dry_run;
        self.phase = Phase::Running { spec, selector };
        if !dry_run {
            self.adopt_and_release(out);
        }
        self.report_gateless(out);
        self.status_dirty = true;
    }

    /// Readiness-gate mode: managed pods that do not declare the gate are left alone, and
    /// reported once each.
    fn report_gateless(&mut self, out: &mut Vec<Effect>) {
        let gateless: BTreeSet<String> = match self.control {
            TrafficControl::Label => BTreeSet::new(),
            TrafficControl::ReadinessGate => self
                .observed
                .managed
                .iter()
                .filter(|p| !p.traffic_gate && !p.terminating)
                .map(|p| p.name.to_string())
                .collect(),
        };
        for pod in self.observed.managed.iter() {
            if gateless.contains(&*pod.name) && !self.gateless.contains(&*pod.name) {
                out.push(Effect::Publish(Report {
                    pod: Some(pod.clone()),
                    note: Note::NoReadinessGate {
                        pod: pod.name.to_string(),
                    },
                }));
            }
        }
        self.gateless = gateless;
    }

    /// Readiness-gate mode: the pod condition follows each managed pod's traffic state
    /// (`True` for `yes`), whether the state was just written or the condition was changed
    /// or lost since.
    fn sync_gates(&mut self, out: &mut Vec<Effect>) {
        if self.control != TrafficControl::ReadinessGate {
            return;
        }
        let Some(spec) = self.running_spec().cloned() else {
            return;
        };
        if spec.dry_run {
            return;
        }
        let fleet = self.fleet(false);
        for (pod, view) in fleet.pods.iter().zip(&fleet.views) {
            if pod.terminating || self.awaiting.contains_key(&*pod.name) {
                continue;
            }
            let Some(traffic) = view.marks.traffic() else {
                continue;
            };
            let serve = traffic == Traffic::Yes;
            if pod.traffic_condition != Some(serve) {
                self.write(pod, PodChange::SetGate(serve), Cause::Gate, out);
            }
        }
    }

    /// Whether to ask for a finalizer change on this version of the resource: once per version.
    fn ask_finalizer_change(&mut self, kvs: &KubervisorService) -> bool {
        let version = kvs.resource_version().unwrap_or_default();
        if self.finalizer_asked.as_ref() == Some(&version) {
            return false;
        }
        self.finalizer_asked = Some(version);
        true
    }

    fn stop(&mut self, reason: StopReason, message: String, now: Timestamp, out: &mut Vec<Effect>) {
        self.phase = Phase::Stopped(reason);
        let note = (reason, message.clone());
        if self.stop_note.as_ref() != Some(&note) {
            out.push(Effect::Publish(Report {
                pod: None,
                note: Note::NotRunning {
                    reason,
                    message: message.clone(),
                },
            }));
            self.stop_note = Some(note);
        }
        self.write_condition(not_ready(reason.as_str(), message), None, false, now, out);
    }

    fn adopt_and_release(&mut self, out: &mut Vec<Effect>) {
        let fleet = self.fleet(false);
        let managed = &fleet.pods;
        for pod in managed {
            let state = match self.control {
                TrafficControl::Label => &pod.labels,
                TrafficControl::ReadinessGate => &pod.annotations,
            };
            let adopted =
                pod.labels.get(NAME_LABEL) == Some(&self.name) && state.contains_key(TRAFFIC_LABEL);
            if !adopted && !pod.terminating {
                self.write(pod, PodChange::Adopt, Cause::Adopt, out);
            }
        }
        // Pods that carry our name but left the selector get their traffic back.
        let managed_names: BTreeSet<&str> = managed.iter().map(|p| &*p.name).collect();
        for pod in self.observed.labelled.clone() {
            if !managed_names.contains(&*pod.name) && !pod.terminating {
                self.write(&pod, PodChange::Release, Cause::Release, out);
            }
        }
    }

    /// The resource is being deleted: hand every pod back.
    fn clean_up(&mut self, kvs: &Arc<KubervisorService>, out: &mut Vec<Effect>) {
        if !kvs.finalizers().iter().any(|f| f == FINALIZER) {
            return;
        }
        for pod in self.still_labelled() {
            self.write(&pod, PodChange::Release, Cause::Release, out);
        }
    }

    /// Pods that still carry this resource's name, as far as writes tell.
    fn still_labelled(&self) -> Vec<Arc<SlimPod>> {
        self.observed
            .labelled
            .iter()
            .map(|pod| self.overlay(pod))
            .filter(|pod| pod.labels.get(NAME_LABEL) == Some(&self.name))
            .collect()
    }

    /// Once every pod got its traffic back, the finalizer goes and the deletion completes.
    fn remove_finalizer_when_done(&mut self, out: &mut Vec<Effect>) {
        let Some(entry) = self.observed.kvs.clone() else {
            return;
        };
        let kvs = entry.object;
        if kvs.finalizers().iter().any(|f| f == FINALIZER)
            && self.still_labelled().is_empty()
            && self.ask_finalizer_change(&kvs)
        {
            out.push(Effect::RemoveFinalizer(kvs));
        }
    }

    fn evaluate(
        &mut self,
        breaker_name: &str,
        result: Result<Findings, SourceError>,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let Some(spec) = self.running_spec().cloned() else {
            return;
        };
        let Some(breaker) = spec.breakers.iter().find(|b| b.name == breaker_name) else {
            return;
        };
        // A newer answer replaces one held back.
        self.held.remove(breaker_name);
        let findings = match result {
            Ok(findings) => {
                if self.source_errors.remove(breaker_name).is_some() {
                    self.status_dirty = true;
                }
                findings
            }
            Err(error) => {
                // Fail safe: a source that cannot answer ejects nothing.
                let message = error.to_string();
                self.record_result(
                    BreakerStatus {
                        name: breaker_name.to_string(),
                        result: "SourceError".into(),
                        message: Some(message.clone()),
                        ..BreakerStatus::default()
                    },
                    now,
                    out,
                );
                if self.source_errors.get(breaker_name) != Some(&message) {
                    self.source_errors
                        .insert(breaker_name.to_string(), message.clone());
                    out.push(Effect::Publish(Report {
                        pod: None,
                        note: Note::SourceError {
                            breaker: breaker_name.to_string(),
                            message,
                        },
                    }));
                    self.status_dirty = true;
                }
                return;
            }
        };
        let dry_run = spec.dry_run || breaker.dry_run;
        let fleet = self.fleet(spec.dry_run);
        let views = &fleet.views;
        let plan = plan_ejections(&breaker.name, limits(breaker), views, &findings);
        self.follow_panic(&breaker.name, plan.panic, out);
        self.record_result(
            breaker_result(&breaker.name, &findings, &plan, views, dry_run),
            now,
            out,
        );
        let mut holding = BTreeSet::new();
        // A pod with a write on its way (its adoption, its return to traffic) is judged
        // again once the write is back; the rest of the answer is acted on now.
        let hold = !self.awaiting.is_empty()
            && findings
                .anomalies
                .iter()
                .any(|a| self.awaiting.contains_key(&a.pod));
        for ejection in &plan.ejections {
            let Some(pod) = fleet.pod(&ejection.pod) else {
                continue;
            };
            if self.awaiting.contains_key(&*pod.name) {
                continue;
            }
            if dry_run {
                holding.insert((pod.name.to_string(), DecisionKind::Break));
                self.report_dry_run(
                    pod,
                    &breaker.name,
                    DecisionKind::Break,
                    Note::DryRunEject(ejection.clone()),
                    out,
                );
                continue;
            }
            let change = PodChange::Eject {
                breaker: breaker.name.clone(),
                retry_count: ejection.retry_count,
                at: now,
            };
            self.write(pod, change, Cause::Eject(ejection.clone()), out);
        }
        if dry_run {
            self.forget_dry_run(&[DecisionKind::Break], &holding);
        }
        let spared: Vec<String> = plan.spared_by_floor().map(|s| s.pod.clone()).collect();
        let previous = self
            .floor_notes
            .get(&breaker.name)
            .cloned()
            .unwrap_or_default();
        if previous != spared {
            if !spared.is_empty() {
                out.push(Effect::Publish(Report {
                    pod: None,
                    note: Note::Floor {
                        breaker: breaker.name.clone(),
                        pods: spared.clone(),
                        min_available: plan.min_available,
                        ready_managed: plan.ready_managed,
                    },
                }));
            }
            self.floor_notes.insert(breaker.name.clone(), spared);
        }
        if hold {
            self.held.insert(breaker.name.clone(), findings);
        }
    }

    /// Keeps a breaker's result for the status; the status is rewritten only when something
    /// other than the evaluation time changed.
    fn record_result(&mut self, mut result: BreakerStatus, now: Timestamp, out: &mut Vec<Effect>) {
        let index = self
            .breaker_results
            .iter()
            .position(|r| r.name == result.name);
        if let Some(old) = index.map(|i| &self.breaker_results[i]) {
            let mut timeless = old.clone();
            timeless.last_evaluation_time = None;
            if timeless == result {
                return;
            }
        }
        out.push(Effect::BreakerState {
            breaker: result.name.clone(),
            state: BreakerState {
                anomalous: result.anomalous,
                spared_by_floor: result.spared_by_floor,
                panic: result.result == "Panic",
                source_failing: result.result == "SourceError",
            },
        });
        result.last_evaluation_time = Some(Time(now));
        match index {
            Some(i) => self.breaker_results[i] = result,
            None => {
                // Kept for the resource's life: no room for more than its breakers.
                self.breaker_results.reserve_exact(1);
                self.breaker_results.push(result);
            }
        }
        self.status_dirty = true;
    }

    /// The breakers' results in the spec's order.
    fn breaker_statuses(&self, spec: &ResolvedSpec) -> Vec<BreakerStatus> {
        spec.breakers
            .iter()
            .filter_map(|b| {
                self.breaker_results
                    .iter()
                    .find(|r| r.name == b.name)
                    .cloned()
            })
            .collect()
    }

    /// Reports a breaker entering panic once, and leaving it once.
    fn follow_panic(&mut self, breaker: &str, panic: Option<Panic>, out: &mut Vec<Effect>) {
        let note = match (panic, self.panics.contains_key(breaker)) {
            (Some(panic), false) => {
                self.panics.insert(breaker.to_string(), panic);
                Note::Panic {
                    breaker: breaker.to_string(),
                    panic,
                }
            }
            (None, true) => {
                self.panics.remove(breaker);
                Note::PanicEnded {
                    breaker: breaker.to_string(),
                }
            }
            _ => return,
        };
        out.push(Effect::Publish(Report { pod: None, note }));
        self.status_dirty = true;
    }

    /// Acts on the ejected pods whose time has come.
    fn activate(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let Some(spec) = self.running_spec().cloned() else {
            return;
        };
        let fleet = self.fleet(spec.dry_run);
        let views = &fleet.views;
        let by_name = |name: &str| fleet.pod(name).cloned();
        // The floor first: pods given back here are not judged again below.
        for restoration in restore_floor(&spec, views) {
            let Some(pod) = by_name(&restoration.pod) else {
                continue;
            };
            if spec.dry_run {
                let breaker = restoration.breaker.clone();
                let note = Note::DryRunRestore(restoration);
                self.report_dry_run(&pod, &breaker, DecisionKind::Restore, note, out);
                continue;
            }
            let change = PodChange::Reinstate { to: Traffic::Yes };
            self.write(&pod, change, Cause::Restore(restoration), out);
        }
        if !spec.dry_run {
            for forgotten in forget_retries(&spec, views, now) {
                if let Some(pod) = by_name(&forgotten.pod) {
                    self.write(
                        &pod,
                        PodChange::ForgetRetries,
                        Cause::Forget(forgotten),
                        out,
                    );
                }
            }
        }
        let mut holding = BTreeSet::new();
        for activation in plan_activations(&spec, views, now) {
            let Some(pod) = fleet.pod(&activation.pod) else {
                continue;
            };
            if self.awaiting.contains_key(&*pod.name) {
                continue;
            }
            if activation.action == Action::Kill
                && self
                    .kill_blocked
                    .get(&*pod.name)
                    .is_some_and(|at| *at > now)
            {
                continue;
            }
            let kind = DecisionKind::of(activation.action);
            let breaker = pod.view_in(self.control).marks.strategy.unwrap_or_default();
            if spec.dry_run {
                holding.insert((pod.name.to_string(), kind));
                self.report_dry_run(pod, &breaker, kind, Note::DryRunReinstate(activation), out);
                continue;
            }
            let change = match activation.action {
                Action::Activate => PodChange::Reinstate { to: Traffic::Yes },
                Action::Pause => PodChange::Reinstate { to: Traffic::Pause },
                Action::Kill => PodChange::Kill(spec.activator_for(Some(&breaker)).kill_method),
            };
            self.write(pod, change, Cause::Reinstate(activation, breaker), out);
        }
        // A refused kill is remembered while it is tried again and its pod stays out of
        // traffic, so that it is reported once.
        let awaiting = &self.awaiting;
        self.kill_blocked.retain(|name, retry_at| {
            (*retry_at > now || awaiting.contains_key(name))
                && views
                    .iter()
                    .any(|v| v.name == *name && v.marks.traffic() == Some(Traffic::No))
        });
        if spec.dry_run {
            self.forget_dry_run(
                &[
                    DecisionKind::Activate,
                    DecisionKind::Pause,
                    DecisionKind::Kill,
                ],
                &holding,
            );
        }
    }

    fn written(&mut self, pod: &str, outcome: Written, now: Timestamp, out: &mut Vec<Effect>) {
        let Some(Awaiting {
            before,
            cause,
            ejecting,
        }) = self.awaiting.remove(pod)
        else {
            return;
        };
        if ejecting.is_some() {
            // The fleet no longer shows the pod as the ejection would leave it.
            self.pending_generation += 1;
        }
        if self.awaiting.is_empty() {
            // A burst of writes (adoption, a mass ejection) leaves room that would stay.
            self.awaiting.shrink_to_fit();
        }
        let after = match outcome {
            Written::Done(after) => after,
            Written::Blocked(message) => {
                if let Cause::Reinstate(activation, _) = cause {
                    let retry_at = now + KILL_RETRY;
                    if self
                        .kill_blocked
                        .insert(pod.to_string(), retry_at)
                        .is_none()
                    {
                        out.push(Effect::Publish(Report {
                            pod: Some(before),
                            note: Note::KillBlocked {
                                activation,
                                message,
                            },
                        }));
                    }
                }
                return;
            }
            // Decided again on the next input from outside, normally with the newer version
            // the watch brings; not at once on this one.
            Written::Stale(_) => {
                self.stale
                    .insert(before.name.to_string(), before.resource_version.clone());
                return;
            }
            // Decided again on the next input.
            Written::Failed(_) => return,
        };
        self.kill_blocked.remove(pod);
        // A write on top of a write the index has not shown yet: the index may still hold
        // the version from before the first one, or any version between.
        self.pending_generation += 1;
        let mut shown = match self.pending.remove(&*before.name) {
            Some(p)
                if p.after.as_ref().map(|a| &a.resource_version)
                    == Some(&before.resource_version) =>
            {
                p.before
            }
            _ => Vec::new(),
        };
        shown.push(before.resource_version.clone());
        self.pending.insert(
            before.name.to_string(),
            Pending {
                before: shown,
                after: after.map(Arc::new),
            },
        );
        self.status_dirty = true;
        let (breaker, kind, note) = match cause {
            Cause::Adopt | Cause::Release | Cause::Gate => return,
            Cause::Eject(ejection) => (
                ejection.breaker.clone(),
                DecisionKind::Break,
                Note::Ejected(ejection),
            ),
            Cause::Reinstate(activation, breaker) => (
                breaker,
                DecisionKind::of(activation.action),
                Note::Reinstated(activation),
            ),
            Cause::Restore(restoration) => (
                restoration.breaker.clone(),
                DecisionKind::Restore,
                Note::FloorRestored(restoration),
            ),
            Cause::Forget(forgotten) => {
                out.push(Effect::Publish(Report {
                    pod: Some(before),
                    note: Note::RetriesForgotten(forgotten),
                }));
                return;
            }
        };
        out.push(Effect::CountDecision {
            breaker,
            pod: before.name.to_string(),
            kind,
            dry_run: false,
        });
        out.push(Effect::Publish(Report {
            pod: Some(before),
            note,
        }));
    }

    fn write(
        &mut self,
        pod: &Arc<SlimPod>,
        change: PodChange,
        cause: Cause,
        out: &mut Vec<Effect>,
    ) {
        if self.awaiting.contains_key(&*pod.name)
            || self.stale.get(&*pod.name) == Some(&pod.resource_version)
        {
            return;
        }
        let ejecting = match &change {
            PodChange::Eject {
                breaker,
                retry_count,
                at,
            } => {
                self.pending_generation += 1;
                Some((breaker.clone(), *retry_count, *at))
            }
            _ => None,
        };
        self.awaiting.insert(
            pod.name.to_string(),
            Awaiting {
                before: pod.clone(),
                cause,
                ejecting,
            },
        );
        out.push(Effect::Pod(PodWrite {
            pod: pod.clone(),
            change,
            marks_in: marks_in(self.control),
        }));
    }

    /// Reports a dry-run decision once while it holds: counted and published.
    fn report_dry_run(
        &mut self,
        pod: &Arc<SlimPod>,
        breaker: &str,
        kind: DecisionKind,
        note: Note,
        out: &mut Vec<Effect>,
    ) {
        if !self.dry_run_reported.insert((pod.name.to_string(), kind)) {
            return;
        }
        out.push(Effect::CountDecision {
            breaker: breaker.to_string(),
            pod: pod.name.to_string(),
            kind,
            dry_run: true,
        });
        out.push(Effect::Publish(Report {
            pod: Some(pod.clone()),
            note,
        }));
    }

    /// Forgets reported dry-run decisions of these kinds that no longer hold, so they are
    /// reported again if they come back.
    fn forget_dry_run(
        &mut self,
        kinds: &[DecisionKind],
        holding: &BTreeSet<(String, DecisionKind)>,
    ) {
        self.dry_run_reported
            .retain(|key| !kinds.contains(&key.1) || holding.contains(key));
    }

    /// A pod as decisions must see it: the index, corrected by a write it has not shown
    /// yet, and ejected if its ejection is on its way.
    ///
    /// Only an ejection is shown before it comes back: every other write (an adoption, a
    /// return to traffic) gives a pod traffic, and until it is done the pod counts as not
    /// serving, which can only spare pods, never take the fleet below its floor.
    fn overlay(&self, pod: &Arc<SlimPod>) -> Arc<SlimPod> {
        let shown = self.shown_written(pod);
        match self
            .awaiting
            .get(&*pod.name)
            .and_then(|a| a.ejecting.as_ref())
        {
            Some((breaker, retry_count, at)) => {
                let marks_in = marks_in(self.control);
                let mut ejected = (*shown).clone();
                let state = match marks_in {
                    MarksIn::Labels => &mut ejected.labels,
                    MarksIn::Annotations => &mut ejected.annotations,
                };
                state.insert(TRAFFIC_LABEL, Traffic::No.as_str());
                state.insert(STRATEGY_LABEL, breaker);
                ejected
                    .annotations
                    .insert(BREAK_AT_ANNOTATION, format_break_at(*at));
                ejected
                    .annotations
                    .insert(RETRY_COUNT_ANNOTATION, retry_count.to_string());
                Arc::new(ejected)
            }
            None => shown,
        }
    }

    /// A pod as the index shows it, corrected by a write it has not shown yet.
    fn shown_written(&self, pod: &Arc<SlimPod>) -> Arc<SlimPod> {
        match self.pending.get(&*pod.name) {
            Some(pending) if pending.before.contains(&pod.resource_version) => match &pending.after
            {
                Some(after) => after.clone(),
                None => Arc::new(SlimPod {
                    terminating: true,
                    ..(**pod).clone()
                }),
            },
            _ => pod.clone(),
        }
    }

    /// Forgets the writes the index shows now (or whose pod is gone from it, or shows a
    /// version no write of ours made).
    fn forget_shown_writes(&mut self) {
        let observed = &self.observed;
        let writes = self.pending.len();
        self.pending.retain(|name, pending| {
            observed
                .managed
                .iter()
                .chain(&observed.labelled)
                .any(|p| *p.name == **name && pending.before.contains(&p.resource_version))
        });
        if self.pending.len() != writes {
            self.pending_generation += 1;
        }
        if self.pending.is_empty() {
            self.pending.shrink_to_fit();
        }
    }

    /// The managed pods as decisions must see them, in name order.
    fn pods(&self, dry_run: bool) -> Vec<Arc<SlimPod>> {
        let gated = self.control == TrafficControl::ReadinessGate;
        let mut pods: Vec<Arc<SlimPod>> = self
            .observed
            .managed
            .iter()
            // In readiness-gate mode a pod without the gate is never touched.
            .filter(|pod| !gated || pod.traffic_gate)
            .map(|pod| self.overlay(pod))
            .collect();
        if dry_run {
            // Nothing was labelled in a dry run: judge unlabelled pods as if adopted.
            for pod in &mut pods {
                let state = if gated {
                    &mut Arc::make_mut(pod).annotations
                } else {
                    &mut Arc::make_mut(pod).labels
                };
                state.insert_if_absent(TRAFFIC_LABEL, Traffic::Yes.as_str());
            }
        }
        // Names are unique in a namespace: an unstable sort gives the same order.
        pods.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        pods
    }

    /// The spec of this version of the resource, resolved once.
    fn resolve(&mut self, entry: &KvsEntry) -> Resolved {
        if let Some((object, resolved)) = &mut self.resolved
            && (Arc::ptr_eq(object, &entry.object)
                || (resolved.is_ok()
                    && entry.decode_error.is_none()
                    && object.spec == entry.object.spec))
        {
            // The same spec in a newer version of the object (its status was written):
            // the same resolution, shared by everything that holds it, and the older
            // object let go.
            *object = entry.object.clone();
            return resolved.clone();
        }
        let resolved = resolve(entry).map(Arc::new);
        self.resolved = Some((entry.object.clone(), resolved.clone()));
        resolved
    }

    /// [`State::pods`] and their views, built again only when what they come from changed.
    fn fleet(&mut self, dry_run: bool) -> Arc<Fleet> {
        if let Some(fleet) = &self.fleet
            && fleet.built_from(self, dry_run)
        {
            return fleet.clone();
        }
        let pods = self.pods(dry_run);
        let fleet = Arc::new(Fleet {
            observed: self.observed.managed.clone(),
            pending_generation: self.pending_generation,
            dry_run,
            control: self.control,
            views: pods.iter().map(|p| p.view_in(self.control)).collect(),
            pods,
        });
        self.fleet = Some(fleet.clone());
        fleet
    }

    /// When the activator must act next: at once when the floor needs restoring, else the
    /// earliest due time of the ejected pods or of a retry count to forget.
    fn next_activation(&mut self, now: Timestamp) -> Option<Timestamp> {
        let spec = self.running_spec().cloned()?;
        let fleet = self.fleet(spec.dry_run);
        let views = &fleet.views;
        if !restore_floor(&spec, views).is_empty() {
            return Some(Timestamp::MIN);
        }
        // A pod whose kill was refused is due again when the kill may be retried.
        let ejected: Vec<PodView> = views
            .iter()
            .filter(|v| v.marks.traffic() == Some(Traffic::No))
            .filter(|v| !self.kill_blocked.contains_key(&v.name))
            .cloned()
            .collect();
        let retry = self.kill_blocked.values().min().copied();
        let forget = if spec.dry_run {
            None
        } else {
            next_forget(&spec, views)
        };
        [earliest_due(&spec, &ejected, now), forget, retry]
            .into_iter()
            .flatten()
            .min()
    }

    /// Writes the status of a running resource: the `Ready` condition and the pod counts.
    fn write_status(&mut self, now: Timestamp, out: &mut Vec<Effect>) {
        let Some(spec) = self.running_spec().cloned() else {
            return;
        };
        let counts = count(&self.fleet(spec.dry_run).views);
        if self.counts_shown.replace(counts) != Some(counts) {
            out.push(Effect::PodCounts(counts));
        }
        let condition = if !self.source_errors.is_empty() {
            let errors: Vec<String> = self
                .source_errors
                .iter()
                .map(|(b, e)| format!("breaker {b}: {e}"))
                .collect();
            not_ready("SourceError", errors.join("; "))
        } else if !self.panics.is_empty() {
            let panics: Vec<String> = self
                .panics
                .iter()
                .map(|(b, p)| format!("breaker {b}: {p}"))
                .collect();
            not_ready("Panic", panics.join("; "))
        } else {
            let names: Vec<&str> = spec.breakers.iter().map(|b| b.name.as_str()).collect();
            if spec.dry_run {
                ready(
                    "DryRun",
                    format!(
                        "dry run: breakers {} decide and report, no pod is touched",
                        names.join(", ")
                    ),
                )
            } else {
                let mut message = format!("breakers {} running", names.join(", "));
                if !self.gateless.is_empty() {
                    let pods: Vec<&str> = self.gateless.iter().map(String::as_str).collect();
                    message.push_str(&format!(
                        "; {} pod(s) without the readiness gate {TRAFFIC_CONDITION} left alone: {}",
                        pods.len(),
                        pods.join(", ")
                    ));
                }
                ready("Running", message)
            }
        };
        let pod_count = PodCountStatus {
            nb_pods_managed: counts.managed,
            nb_pods_breaked: counts.broken,
            nb_pods_paused: counts.paused,
            nb_pods_unknown: counts.unknown,
            last_probe_time: None,
        };
        let breakers = self.breaker_statuses(&spec);
        // Until every breaker has been evaluated once, the results alone wait for the rest:
        // a resource starting with k breakers costs two status writes rather than k + 1.
        let results_pending = breakers.len() < spec.breakers.len();
        let running = Some((pod_count, breakers));
        self.write_condition(condition, running, results_pending, now, out);
    }

    /// Asks for a status write when anything but probe times changed, with two exceptions
    /// that only delay a write: breaker results while `results_pending`, and changes in
    /// numbers alone within [`STATUS_NUMBERS_REFRESH`] of the last write.
    fn write_condition(
        &mut self,
        condition: KubervisorServiceCondition,
        running: Option<(PodCountStatus, Vec<BreakerStatus>)>,
        results_pending: bool,
        now: Timestamp,
        out: &mut Vec<Effect>,
    ) {
        let Some(entry) = &self.observed.kvs else {
            return;
        };
        let kvs = &entry.object;
        let stored_status = kvs.status.clone().unwrap_or_default();
        let stored = without_probe_times(&stored_status);
        // What the API server holds once the write on its way lands: while the index still
        // shows the status from before that write (other changes, such as the finalizer,
        // may have moved the resource meanwhile), the write is in flight.
        let in_flight = match &self.status_written {
            Some((written, before)) if before.contains(&stored) => Some(written),
            _ => None,
        };
        // A first write still in flight set the start time: keep it, or every later
        // computation would differ from it by its start time alone.
        let started = in_flight.and_then(|w| w.start_time.clone());
        let status = next_status(kvs, condition, running, started, now);
        let comparable = without_probe_times(&status);
        if comparable == stored {
            self.status_written = None;
            self.status_held_until = None;
            return;
        }
        let shown = in_flight.unwrap_or(&stored);
        if comparable == *shown {
            return;
        }
        if results_pending && without_breakers(&comparable) == without_breakers(shown) {
            return;
        }
        if without_numbers(&comparable) == without_numbers(shown) {
            let last = self.status_at.or_else(|| written_at(&stored_status));
            if let Some(due) = last.map(|at| at + STATUS_NUMBERS_REFRESH)
                && now < due
            {
                self.status_held_until = Some(due);
                return;
            }
        }
        // Earlier writes may still show on the way to this one: none of them is news.
        let before = match self.status_written.take() {
            Some((written, mut before)) if before.contains(&stored) => {
                before.push(written);
                if before.len() > STATUS_WRITES_FOLLOWED {
                    before.remove(0);
                }
                before
            }
            _ => vec![stored],
        };
        self.status_written = Some((comparable, before));
        self.status_at = Some(now);
        self.status_held_until = None;
        out.push(Effect::Status(Box::new(status)));
    }
}

/// Where pods' traffic state is kept in this traffic control mode.
pub fn marks_in(control: TrafficControl) -> MarksIn {
    match control {
        TrafficControl::Label => MarksIn::Labels,
        TrafficControl::ReadinessGate => MarksIn::Annotations,
    }
}

fn limits(breaker: &ResolvedBreaker) -> Limits {
    Limits {
        min_available: MinAvailable {
            count: breaker.min_pods_available_count,
            ratio_percent: breaker.min_pods_available_ratio,
        },
        panic_threshold_percent: breaker.panic_threshold_percent,
        max_per_evaluation: breaker.max_ejections_per_evaluation,
    }
}

fn resolve(entry: &KvsEntry) -> Result<ResolvedSpec, String> {
    if let Some(error) = &entry.decode_error {
        return Err(error.clone());
    }
    entry.object.spec.resolve().map_err(|e| e.to_string())
}

/// The status after a new `Ready` condition (and pod counts and breaker results, when
/// running), at `now`.
fn next_status(
    kvs: &KubervisorService,
    condition: KubervisorServiceCondition,
    running: Option<(PodCountStatus, Vec<BreakerStatus>)>,
    started: Option<Time>,
    now: Timestamp,
) -> KubervisorServiceStatus {
    let (pod_count, breakers) = match running {
        Some((counts, breakers)) => (Some(counts), Some(breakers)),
        None => (None, None),
    };
    let now = Time(now);
    let old = kvs.status.clone().unwrap_or_default();
    let previous = old.conditions.iter().find(|c| c.type_ == condition.type_);
    let mut condition = condition;
    condition.last_probe_time = Some(now.clone());
    condition.last_transition_time = match previous {
        Some(p) if p.status == condition.status => {
            p.last_transition_time.clone().or(Some(now.clone()))
        }
        _ => Some(now.clone()),
    };
    // Kept for the resource's life (in the status last written): no spare room.
    let mut conditions = Vec::with_capacity(old.conditions.len() + 1);
    conditions.extend(
        old.conditions
            .iter()
            .filter(|c| c.type_ != condition.type_)
            .cloned(),
    );
    conditions.push(condition);
    conditions.shrink_to_fit();
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    KubervisorServiceStatus {
        conditions,
        start_time: old.start_time.clone().or(started).or(Some(now.clone())),
        pod_count: pod_count
            .map(|c| PodCountStatus {
                last_probe_time: Some(now.clone()),
                ..c
            })
            .or(old.pod_count.clone()),
        observed_generation: kvs.metadata.generation,
        breakers: breakers.unwrap_or(old.breakers),
    }
}

/// Anomalous pods listed in a breaker's status at most, worst first.
const STATUS_POD_SCORES: usize = 10;

/// What one evaluation of a breaker computed, as the status shows it (without its time).
fn breaker_result(
    name: &str,
    findings: &Findings,
    plan: &EjectionPlan,
    views: &[PodView],
    dry_run: bool,
) -> BreakerStatus {
    let judged = if findings.unlisted_are_healthy {
        // A custom detector judges every pod it could see.
        views.iter().filter(|p| p.is_serving_capable()).count()
    } else {
        findings.healthy.len() + findings.anomalies.len()
    };
    let (result, message) = if let Some(panic) = plan.panic {
        ("Panic", Some(panic.to_string()))
    } else if let Some(why) = &findings.not_enough_data {
        ("NotEnoughData", Some(why.clone()))
    } else if judged == 0 && !findings.unlisted_are_healthy {
        // No data ejects nothing; say so rather than report a clean bill of health.
        let why = match findings.not_judged.first() {
            None => "the query returned no series: no pod is judged".to_string(),
            Some((pod, why)) => format!(
                "none of the {} pods in the data could be judged (pod {pod}: {why})",
                findings.not_judged.len()
            ),
        };
        ("NotEnoughData", Some(why))
    } else if dry_run {
        ("DryRun", None)
    } else {
        ("Ok", None)
    };
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    BreakerStatus {
        name: name.to_string(),
        last_evaluation_time: None,
        result: result.into(),
        message,
        judged: count(judged),
        anomalous: count(findings.anomalies.len()),
        ejected: count(plan.ejections.len()),
        spared_by_floor: count(plan.spared_by_floor().count()),
        statistic: findings.statistic.map(statistic_status),
        anomalous_pods: findings
            .anomalies
            .iter()
            .filter_map(|a| {
                let (score, threshold) = a.evidence.compared()?;
                Some(PodScoreStatus {
                    pod: a.pod.clone(),
                    score: significant(score)?,
                    threshold: significant(threshold)?,
                })
            })
            .take(STATUS_POD_SCORES)
            .collect(),
    }
}

fn statistic_status(statistic: FleetStatistic) -> FleetStatisticStatus {
    match statistic {
        FleetStatistic::MeanStdev { hosts, mean, stdev } => FleetStatisticStatus {
            kind: "meanStdev".into(),
            hosts: u32::try_from(hosts).unwrap_or(u32::MAX),
            mean: significant(mean),
            stdev: significant(stdev),
            ..FleetStatisticStatus::default()
        },
        FleetStatistic::MedianMad {
            hosts, median, mad, ..
        } => FleetStatisticStatus {
            kind: "medianMad".into(),
            hosts: u32::try_from(hosts).unwrap_or(u32::MAX),
            median: significant(median),
            mad: significant(mad),
            ..FleetStatisticStatus::default()
        },
    }
}

/// `value` to 4 significant digits, so that noise in the last digits of a fleet statistic
/// costs no status write; `None` for a value JSON cannot carry.
fn significant(value: f64) -> Option<f64> {
    if !value.is_finite() {
        return None;
    }
    if value == 0.0 {
        return Some(0.0);
    }
    let digits = 3 - value.abs().log10().floor() as i32;
    let rounded = if digits >= 0 {
        let scale = 10f64.powi(digits.min(300));
        (value * scale).round() / scale
    } else {
        let scale = 10f64.powi((-digits).min(300));
        (value / scale).round() * scale
    };
    rounded.is_finite().then_some(rounded)
}

fn ready(reason: &str, message: String) -> KubervisorServiceCondition {
    condition("True", reason, message)
}

fn not_ready(reason: &str, message: String) -> KubervisorServiceCondition {
    condition("False", reason, message)
}

fn condition(status: &str, reason: &str, message: String) -> KubervisorServiceCondition {
    KubervisorServiceCondition {
        type_: "Ready".into(),
        status: status.into(),
        last_probe_time: None,
        last_transition_time: None,
        reason: Some(reason.into()),
        message: Some(message),
    }
}

/// When a stored status was written: the latest probe time it carries.
fn written_at(status: &KubervisorServiceStatus) -> Option<Timestamp> {
    status
        .conditions
        .iter()
        .filter_map(|c| c.last_probe_time.as_ref())
        .chain(
            status
                .pod_count
                .iter()
                .filter_map(|c| c.last_probe_time.as_ref()),
        )
        .map(|t| t.0)
        .max()
}

/// A status without its breaker results.
fn without_breakers(status: &KubervisorServiceStatus) -> KubervisorServiceStatus {
    KubervisorServiceStatus {
        breakers: Vec::new(),
        ..status.clone()
    }
}

/// A status without the numbers that follow live metrics: the fleet statistics' values and
/// the anomalous pods' scores and thresholds (which pods, and how many, stay).
fn without_numbers(status: &KubervisorServiceStatus) -> KubervisorServiceStatus {
    let mut status = status.clone();
    for breaker in &mut status.breakers {
        if let Some(statistic) = &mut breaker.statistic {
            statistic.mean = None;
            statistic.stdev = None;
            statistic.median = None;
            statistic.mad = None;
        }
        for pod in &mut breaker.anomalous_pods {
            pod.score = 0.0;
            pod.threshold = 0.0;
        }
    }
    status
}

fn without_probe_times(status: &KubervisorServiceStatus) -> KubervisorServiceStatus {
    let mut status = status.clone();
    for c in &mut status.conditions {
        c.last_probe_time = None;
        c.last_transition_time = None;
    }
    if let Some(count) = &mut status.pod_count {
        count.last_probe_time = None;
    }
    for breaker in &mut status.breakers {
        breaker.last_evaluation_time = None;
    }
    status
}

#[cfg(test)]
mod tests;
