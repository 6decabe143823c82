//! One supervisor per KubervisorService: it keeps the pods of its Service adopted,
//! runs one loop per breaker on its evaluation period and the activator every second,
//! and writes the status when it changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use kubervisor_api::pod::{NAME_LABEL, TRAFFIC_LABEL, Traffic};
use kubervisor_api::{
    KubervisorService, KubervisorServiceCondition, KubervisorServiceStatus, PodCountStatus,
    ResolvedBreaker, ResolvedSpec,
};
use kubervisor_core::PodView;
use kubervisor_core::activator::{Action, next_due, plan_activations};
use kubervisor_core::breaker::{MinAvailable, plan_ejections};
use kubervisor_core::status::count;
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::effects::{self, Effects, Written};
use crate::index::{Index, KvsEntry, SlimPod};
use crate::source::Sources;
use crate::telemetry::Metrics;

/// The finalizer that makes Kubervisor hand pods back even when the resource is deleted
/// while the operator is down.
pub const FINALIZER: &str = "kubervisor.k8s.io/cleanup";

/// How often the loops look again when nothing wakes them.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Fewest time between two reconciles of one resource.
    pub reconcile_min_interval: Duration,
    /// A reconcile happens at least this often, changes or not.
    pub resync: Duration,
    /// How often the activator looks at ejected pods.
    pub activator_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            reconcile_min_interval: Duration::from_millis(200),
            resync: Duration::from_secs(10),
            activator_period: Duration::from_secs(1),
        }
    }
}

/// What every supervisor shares.
pub struct Context {
    pub index: Arc<Index>,
    pub effects: Effects,
    pub sources: Sources,
    pub metrics: Arc<Metrics>,
    pub timing: Timing,
}

/// A write the index has not seen yet: decisions use it until the watch catches up.
struct Pending {
    /// The resourceVersion the pod had before the write.
    before: String,
    /// The pod after the write; `None` once deleted.
    after: Option<Arc<SlimPod>>,
}

/// What the running loops work from, set by the reconcile.
#[derive(Clone)]
struct Current {
    selector: BTreeMap<String, String>,
    reference: ObjectReference,
}

#[derive(Default)]
struct Memory {
    pending: HashMap<String, Pending>,
    /// Last error of each breaker's source, for the status.
    source_errors: BTreeMap<String, String>,
    /// Dry-run decisions already reported, so each is reported once while it holds.
    dry_run_reported: BTreeSet<(String, &'static str)>,
    /// Last note published per topic (a breaker, a status reason), so a lasting state is reported once.
    notes: BTreeMap<String, String>,
}

impl Memory {
    /// Forgets reported dry-run decisions of these kinds that no longer hold, so they are
    /// reported again if they come back.
    fn forget_dry_run(&mut self, kinds: &[&str], holding: &BTreeSet<(String, &'static str)>) {
        self.dry_run_reported
            .retain(|(pod, kind)| !kinds.contains(kind) || holding.contains(&(pod.clone(), *kind)));
    }
}

/// Supervises one KubervisorService.
pub struct Supervisor {
    ctx: Arc<Context>,
    pub namespace: String,
    pub name: String,
    current: Mutex<Option<Current>>,
    /// Selects the pods this resource ejected: `kubervisor/name=<name>, kubervisor/traffic=no`.
    ejected_selector: BTreeMap<String, String>,
    /// Serialises decisions so that no two loops decide on the same stale view.
    memory: tokio::sync::Mutex<Memory>,
    wake: Notify,
}

/// The loops a spec runs.
struct Loops {
    spec: Arc<ResolvedSpec>,
    handles: Vec<JoinHandle<()>>,
}

impl Drop for Loops {
    fn drop(&mut self) {
        self.handles.iter().for_each(JoinHandle::abort);
    }
}

/// Where a reconcile left the resource.
enum Phase {
    /// Breakers and activator run.
    Running,
    /// Nothing runs; the reason is on the status.
    Stopped,
    /// The resource is gone or cleaned up: the supervisor ends.
    Finished,
}

impl Supervisor {
    pub fn new(ctx: Arc<Context>, namespace: String, name: String) -> Arc<Supervisor> {
        let ejected_selector = BTreeMap::from([
            (NAME_LABEL.to_string(), name.clone()),
            (TRAFFIC_LABEL.to_string(), Traffic::No.as_str().to_string()),
        ]);
        Arc::new(Supervisor {
            ctx,
            namespace,
            name,
            ejected_selector,
            current: Mutex::new(None),
            memory: tokio::sync::Mutex::new(Memory::default()),
            wake: Notify::new(),
        })
    }

    /// Reconciles until the resource is gone; the caller aborts the task to stop it sooner.
    pub async fn run(self: Arc<Self>) {
        let mut changes = self.ctx.index.subscribe(&self.namespace);
        let mut loops: Option<Loops> = None;
        loop {
            let started = Instant::now();
            // Boxed: between reconciles the task holds a few bytes, not a reconcile's state.
            let result = Box::pin(self.reconcile(&mut loops)).await;
            let error = result.as_ref().err().map(|(reason, _)| *reason);
            self.ctx.metrics.observe_reconcile(
                &self.namespace,
                &self.name,
                started.elapsed(),
                error,
            );
            match result {
                Ok(Phase::Finished) => break,
                Ok(Phase::Running) => {}
                Ok(Phase::Stopped) => loops = None,
                Err((reason, message)) => warn!(kvs = %self.key(), reason, "{message}"),
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.ctx.timing.resync) => {}
            }
            tokio::time::sleep(self.ctx.timing.reconcile_min_interval).await;
        }
        drop(loops);
        self.ctx.metrics.forget(&self.namespace, &self.name);
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn current(&self) -> Option<Current> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_current(&self, current: Option<Current>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = current;
    }

    async fn reconcile(
        self: &Arc<Self>,
        loops: &mut Option<Loops>,
    ) -> Result<Phase, (&'static str, String)> {
        let Some(entry) = self.ctx.index.kvs(&self.namespace, &self.name) else {
            self.set_current(None);
            return Ok(Phase::Finished);
        };
        let kvs = entry.object.clone();
        if kvs.metadata.deletion_timestamp.is_some() {
            self.set_current(None);
            *loops = None;
            return self.finish(&kvs).await;
        }
        self.ensure_finalizer(&kvs).await?;

        let reference = kvs.object_ref(&());
        let spec = match resolve(&entry) {
            Ok(spec) => Arc::new(spec),
            Err(message) => {
                self.set_current(None);
                self.write_status(&kvs, not_ready("InvalidSpec", message.clone()), None)
                    .await?;
                self.report_once(&reference, "InvalidSpec", &message).await;
                return Ok(Phase::Stopped);
            }
        };
        let Some(service) = self.ctx.index.service(&self.namespace, &spec.service) else {
            self.set_current(None);
            let message = format!("Service {}/{} not found", self.namespace, spec.service);
            self.write_status(&kvs, not_ready("ServiceNotFound", message.clone()), None)
                .await?;
            self.report_once(&reference, "ServiceNotFound", &message)
                .await;
            return Ok(Phase::Stopped);
        };
        let Some(selector) = service.managed_selector() else {
            self.set_current(None);
            let message = format!(
                "Service {}/{} selects no pods besides {TRAFFIC_LABEL}: Kubervisor cannot tell which pods it guards",
                self.namespace, spec.service
            );
            self.write_status(
                &kvs,
                not_ready("ServiceHasNoSelector", message.clone()),
                None,
            )
            .await?;
            self.report_once(&reference, "ServiceHasNoSelector", &message)
                .await;
            return Ok(Phase::Stopped);
        };
        self.set_current(Some(Current {
            selector: selector.clone(),
            reference: reference.clone(),
        }));

        let pods = {
            let mut memory = self.memory.lock().await;
            self.adopt_and_release(&mut memory, &selector, spec.dry_run)
                .await;
            self.snapshot(&mut memory, &selector, spec.dry_run)
        };

        if loops.as_ref().is_none_or(|l| l.spec != spec) {
            if loops.is_some() {
                info!(kvs = %self.key(), "spec changed: restarting breaker and activator loops");
            }
            *loops = Some(self.start_loops(spec.clone()));
        }

        let views: Vec<PodView> = pods.iter().map(|p| p.view()).collect();
        let counts = count(&views);
        self.ctx.metrics.set_pod_counts(
            &self.namespace,
            &self.name,
            counts.managed as usize,
            counts.broken as usize,
            counts.paused as usize,
            counts.unknown as usize,
        );
        let source_errors = {
            let mut memory = self.memory.lock().await;
            // A breaker removed from the spec no longer speaks for the resource.
            memory
                .source_errors
                .retain(|name, _| spec.breakers.iter().any(|b| b.name == *name));
            memory.source_errors.clone()
        };
        let condition = if source_errors.is_empty() {
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
                ready("Running", format!("breakers {} running", names.join(", ")))
            }
        } else {
            let errors: Vec<String> = source_errors
                .iter()
                .map(|(b, e)| format!("breaker {b}: {e}"))
                .collect();
            not_ready("SourceError", errors.join("; "))
        };
        let pod_count = PodCountStatus {
            nb_pods_managed: counts.managed,
            nb_pods_breaked: counts.broken,
            nb_pods_paused: counts.paused,
            nb_pods_unknown: counts.unknown,
            last_probe_time: None,
        };
        self.write_status(&kvs, condition, Some(pod_count)).await?;
        Ok(Phase::Running)
    }

    fn start_loops(self: &Arc<Self>, spec: Arc<ResolvedSpec>) -> Loops {
        let mut handles = Vec::new();
        for breaker in &spec.breakers {
            let me = self.clone();
            let breaker = breaker.clone();
            let dry_run = spec.dry_run;
            let fut = async move {
                let mut ticks = tokio::time::interval(breaker.evaluation_period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    // Boxed: an idle loop then holds a few bytes, not a whole tick's state.
                    Box::pin(me.breaker_tick(&breaker, dry_run)).await;
                }
            };
            handles.push(tokio::spawn(fut));
        }
        let me = self.clone();
        let period = self.ctx.timing.activator_period;
        let activator_spec = spec.clone();
        handles.push(tokio::spawn(async move {
            loop {
                let due = Box::pin(me.activator_tick(&activator_spec)).await;
                // Wake when the next pod is due, rather than up to a whole period late.
                let until_due = due
                    .map(|at| at.duration_since(Timestamp::now()))
                    .and_then(|d| Duration::try_from(d).ok());
                let pause =
                    until_due.map_or(period, |d| d.clamp(Duration::from_millis(10), period));
                tokio::time::sleep(pause).await;
            }
        }));
        Loops { spec, handles }
    }

    /// The managed pods as decisions must see them: the index, corrected by writes it has not seen yet.
    fn snapshot(
        &self,
        memory: &mut Memory,
        selector: &BTreeMap<String, String>,
        dry_run: bool,
    ) -> Vec<Arc<SlimPod>> {
        // Pods are shared with the index; only the few that a pending write or a dry run
        // changes are copied.
        let mut pods: Vec<Arc<SlimPod>> = Vec::new();
        let mut seen = BTreeSet::new();
        for pod in self.ctx.index.pods_matching(&self.namespace, selector) {
            if !self.is_mine(&pod) {
                continue;
            }
            seen.insert(pod.name.clone());
            let current = match memory.pending.get(&pod.name) {
                Some(pending) if pending.before == pod.resource_version => match &pending.after {
                    Some(after) => after.clone(),
                    None => Arc::new(SlimPod {
                        terminating: true,
                        ..(*pod).clone()
                    }),
                },
                Some(_) => {
                    memory.pending.remove(&pod.name);
                    pod
                }
                None => pod,
            };
            pods.push(current);
        }
        memory.pending.retain(|name, _| seen.contains(name));
        if dry_run {
            // Nothing was labelled in a dry run: judge unlabelled pods as if adopted.
            for pod in &mut pods {
                if !pod.labels.contains_key(TRAFFIC_LABEL) {
                    Arc::make_mut(pod)
                        .labels
                        .insert(TRAFFIC_LABEL.to_string(), Traffic::Yes.as_str().to_string());
                }
            }
        }
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        pods
    }

    /// A pod matching the selector is ours unless another existing KubervisorService claimed it.
    fn is_mine(&self, pod: &SlimPod) -> bool {
        match pod.labels.get(NAME_LABEL) {
            None => true,
            Some(owner) if *owner == self.name => true,
            Some(owner) => self.ctx.index.kvs(&self.namespace, owner).is_none(),
        }
    }

    async fn adopt_and_release(
        &self,
        memory: &mut Memory,
        selector: &BTreeMap<String, String>,
        dry_run: bool,
    ) {
        if dry_run {
            return;
        }
        let managed = self.snapshot(memory, selector, false);
        for pod in &managed {
            let adopted = pod.labels.get(NAME_LABEL) == Some(&self.name)
                && pod.labels.contains_key(TRAFFIC_LABEL);
            if adopted || pod.terminating {
                continue;
            }
            let written = self
                .ctx
                .effects
                .patch_pod(pod, effects::adopt_ops(pod, &self.name))
                .await;
            self.remember(memory, pod, written, "adopt");
        }
        // Pods that carry our name but left the selector get their traffic back.
        let managed_names: BTreeSet<&str> = managed.iter().map(|p| p.name.as_str()).collect();
        for pod in self.ctx.index.pods_labelled(NAME_LABEL, &self.name) {
            if pod.namespace != self.namespace
                || managed_names.contains(pod.name.as_str())
                || pod.terminating
            {
                continue;
            }
            info!(kvs = %self.key(), pod = %pod.name, "pod left the Service selector: restoring its traffic label");
            let written = self
                .ctx
                .effects
                .patch_pod(&pod, effects::release_ops(&pod))
                .await;
            self.remember(memory, &pod, written, "release");
        }
    }

    fn remember(
        &self,
        memory: &mut Memory,
        before: &SlimPod,
        written: Written,
        what: &str,
    ) -> bool {
        match written {
            Written::Done(after) => {
                memory.pending.insert(
                    before.name.clone(),
                    Pending {
                        before: before.resource_version.clone(),
                        after: after.map(Arc::new),
                    },
                );
                true
            }
            Written::Stale(why) => {
                debug!(kvs = %self.key(), what, "{why}; deciding again next tick");
                false
            }
            Written::Failed(why) => {
                warn!(kvs = %self.key(), what, "{why}");
                false
            }
        }
    }

    async fn breaker_tick(&self, breaker: &ResolvedBreaker, dry_run: bool) {
        let started = Instant::now();
        let result = self
            .ctx
            .sources
            .findings(&breaker.detection, breaker.evaluation_period)
            .await;
        let source = match breaker.detection {
            kubervisor_api::Detection::Custom(_) => "custom",
            _ => "prometheus",
        };
        self.ctx.metrics.observe_source(
            source,
            started.elapsed(),
            result.as_ref().err().map(|e| e.kind()),
        );
        let answered = Instant::now();
        let Some(current) = self.current() else {
            return;
        };
        let mut memory = self.memory.lock().await;
        let findings = match result {
            Ok(findings) => {
                if memory.source_errors.remove(&breaker.name).is_some() {
                    info!(kvs = %self.key(), breaker = %breaker.name, "source recovered");
                    self.wake.notify_one();
                }
                findings
            }
            Err(e) => {
                self.ctx.metrics.observe_evaluation(None);
                let message = e.to_string();
                // Fail safe: a source that cannot answer ejects nothing.
                if memory.source_errors.get(&breaker.name) != Some(&message) {
                    warn!(kvs = %self.key(), breaker = %breaker.name, "source error, ejecting nothing: {message}");
                    memory
                        .source_errors
                        .insert(breaker.name.clone(), message.clone());
                    self.ctx
                        .effects
                        .publish(
                            &current.reference,
                            None,
                            true,
                            "SourceError",
                            "Evaluate",
                            format!("breaker {}: {message}; no pod is ejected", breaker.name),
                        )
                        .await;
                    self.wake.notify_one();
                }
                return;
            }
        };
        let pods = self.snapshot(&mut memory, &current.selector, dry_run);
        let views: Vec<PodView> = pods.iter().map(|p| p.view()).collect();
        let limits = MinAvailable {
            count: breaker.min_pods_available_count,
            ratio_percent: breaker.min_pods_available_ratio,
        };
        let plan = plan_ejections(&breaker.name, limits, &views, &findings);
        debug!(
            kvs = %self.key(),
            breaker = %breaker.name,
            anomalies = findings.anomalies.len(),
            ejections = plan.ejections.len(),
            serving = plan.serving,
            min_available = plan.min_available,
            "breaker evaluated"
        );
        let mut changed = false;
        let mut dry_run_now = BTreeSet::new();
        let mut ejected = Vec::new();
        for ejection in &plan.ejections {
            let Some(pod) = pods.iter().find(|p| p.name == ejection.pod) else {
                continue;
            };
            if dry_run {
                dry_run_now.insert((pod.name.clone(), "break"));
                self.report_dry_run(
                    &mut memory,
                    &current,
                    pod,
                    &breaker.name,
                    "break",
                    "Eject",
                    &ejection.reason,
                )
                .await;
                continue;
            }
            let ops =
                effects::eject_ops(pod, &breaker.name, ejection.retry_count, Timestamp::now());
            let written = self.ctx.effects.patch_pod(pod, ops).await;
            if self.remember(&mut memory, pod, written, "eject") {
                changed = true;
                info!(kvs = %self.key(), "{}", ejection.reason);
                self.ctx
                    .metrics
                    .count_decision(&breaker.name, &self.namespace, &pod.name, "break");
                ejected.push((pod, ejection.reason.clone()));
            }
        }
        // Events go out once every pod write is done, so reporting never delays an ejection.
        let acted_in = answered.elapsed();
        for (pod, reason) in ejected {
            self.ctx
                .effects
                .publish(
                    &current.reference,
                    Some(pod),
                    false,
                    "PodEjected",
                    "Eject",
                    reason,
                )
                .await;
        }
        if dry_run {
            memory.forget_dry_run(&["break"], &dry_run_now);
        }
        let limited: Vec<&str> = plan
            .spared
            .iter()
            .filter(|s| s.reason.contains("must keep traffic"))
            .map(|s| s.pod.as_str())
            .collect();
        let note = if limited.is_empty() {
            String::new()
        } else {
            format!(
                "breaker {}: {} anomalous pod(s) keep traffic ({}): {} of {} pods must keep traffic",
                breaker.name,
                limited.len(),
                limited.join(", "),
                plan.min_available,
                plan.ready_managed
            )
        };
        if memory
            .notes
            .get(&breaker.name)
            .map(String::as_str)
            .unwrap_or("")
            != note
        {
            if !note.is_empty() {
                warn!(kvs = %self.key(), "{note}");
                self.ctx
                    .effects
                    .publish(
                        &current.reference,
                        None,
                        true,
                        "MinimumAvailable",
                        "Eject",
                        note.clone(),
                    )
                    .await;
            }
            memory.notes.insert(breaker.name.clone(), note);
        }
        self.ctx.metrics.observe_evaluation(Some(acted_in));
        if changed {
            self.wake.notify_one();
        }
    }

    /// Acts on the ejected pods whose time has come; returns when the next one is due.
    async fn activator_tick(&self, spec: &ResolvedSpec) -> Option<Timestamp> {
        let current = self.current()?;
        let mut memory = self.memory.lock().await;
        // Most ticks of a healthy fleet find nothing ejected: skip the snapshot then.
        let ejected = self
            .ctx
            .index
            .pods_matching(&self.namespace, &self.ejected_selector);
        if ejected.is_empty() && memory.pending.is_empty() {
            return None;
        }
        let pods = self.snapshot(&mut memory, &current.selector, spec.dry_run);
        let views: Vec<PodView> = pods.iter().map(|p| p.view()).collect();
        let now = Timestamp::now();
        let plan = plan_activations(spec, &views, now);
        let mut changed = false;
        let mut dry_run_now = BTreeSet::new();
        for activation in &plan {
            let Some(pod) = pods.iter().find(|p| p.name == activation.pod) else {
                continue;
            };
            let (kind, reason, verb) = match activation.action {
                Action::Activate => ("activate", "PodActivated", "Activate"),
                Action::Pause => ("pause", "PodPaused", "Pause"),
                Action::Kill => ("kill", "PodKilled", "Kill"),
            };
            let breaker = pod.view().marks.strategy.unwrap_or_default();
            if spec.dry_run {
                dry_run_now.insert((pod.name.clone(), kind));
                self.report_dry_run(
                    &mut memory,
                    &current,
                    pod,
                    &breaker,
                    kind,
                    verb,
                    &activation.reason,
                )
                .await;
                continue;
            }
            let written = match activation.action {
                Action::Activate => {
                    self.ctx
                        .effects
                        .patch_pod(pod, effects::from_ejected_ops(pod, Traffic::Yes))
                        .await
                }
                Action::Pause => {
                    self.ctx
                        .effects
                        .patch_pod(pod, effects::from_ejected_ops(pod, Traffic::Pause))
                        .await
                }
                Action::Kill => self.ctx.effects.delete_pod(pod).await,
            };
            if self.remember(&mut memory, pod, written, kind) {
                changed = true;
                info!(kvs = %self.key(), "{}", activation.reason);
                self.ctx
                    .metrics
                    .count_decision(&breaker, &self.namespace, &pod.name, kind);
                self.ctx
                    .effects
                    .publish(
                        &current.reference,
                        Some(pod),
                        activation.action == Action::Kill,
                        reason,
                        verb,
                        activation.reason.clone(),
                    )
                    .await;
            }
        }
        if spec.dry_run {
            memory.forget_dry_run(&["activate", "pause", "kill"], &dry_run_now);
        }
        if changed {
            self.wake.notify_one();
        }
        next_due(spec, &views, now)
    }

    /// Reports a dry-run decision once while it holds: logged, counted as `dryrun_{kind}`
    /// and published as a `DryRun{verb}` event.
    #[allow(clippy::too_many_arguments)]
    async fn report_dry_run(
        &self,
        memory: &mut Memory,
        current: &Current,
        pod: &SlimPod,
        breaker: &str,
        kind: &'static str,
        verb: &str,
        reason: &str,
    ) {
        if !memory.dry_run_reported.insert((pod.name.clone(), kind)) {
            return;
        }
        info!(kvs = %self.key(), "dry run: {reason}");
        self.ctx.metrics.count_decision(
            breaker,
            &self.namespace,
            &pod.name,
            &format!("dryrun_{kind}"),
        );
        self.ctx
            .effects
            .publish(
                &current.reference,
                Some(pod),
                false,
                &format!("DryRun{verb}"),
                verb,
                format!("dry run: {reason}"),
            )
            .await;
    }

    /// Publishes a warning once per distinct message, so a stuck state does not flood events.
    async fn report_once(&self, reference: &ObjectReference, reason: &'static str, message: &str) {
        let mut memory = self.memory.lock().await;
        let key = format!("status:{reason}");
        if memory.notes.get(&key).map(String::as_str) == Some(message) {
            return;
        }
        memory.notes.insert(key, message.to_string());
        drop(memory);
        warn!(kvs = %self.key(), reason, "{message}");
        self.ctx
            .effects
            .publish(
                reference,
                None,
                true,
                reason,
                "Reconcile",
                message.to_string(),
            )
            .await;
    }

    async fn ensure_finalizer(
        &self,
        kvs: &KubervisorService,
    ) -> Result<(), (&'static str, String)> {
        if kvs.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(());
        }
        let ops = match &kvs.metadata.finalizers {
            Some(list) => json!([
                {"op": "test", "path": "/metadata/finalizers", "value": list},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
            ]),
            None => json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": kvs.resource_version()},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
            ]),
        };
        self.patch_kvs(ops).await.map_err(|e| ("FinalizerError", e))
    }

    async fn patch_kvs(&self, ops: serde_json::Value) -> Result<(), String> {
        let api: Api<KubervisorService> =
            Api::namespaced(self.ctx.effects.client().clone(), &self.namespace);
        let patch: json_patch::Patch = serde_json::from_value(ops).map_err(|e| e.to_string())?;
        let _slot = self.ctx.effects.write_slot().await;
        match api
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            // Changed meanwhile: the next reconcile sees the new version.
            Err(kube::Error::Api(s)) if matches!(s.code, 409 | 422 | 404) => Ok(()),
            Err(e) => Err(format!("KubervisorService {}: {e}", self.key())),
        }
    }

    /// The resource is being deleted: hand every pod back, then let it go.
    async fn finish(&self, kvs: &KubervisorService) -> Result<Phase, (&'static str, String)> {
        if !kvs.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(Phase::Finished);
        }
        let mut all_released = true;
        {
            let mut memory = self.memory.lock().await;
            for pod in self.ctx.index.pods_labelled(NAME_LABEL, &self.name) {
                if pod.namespace != self.namespace {
                    continue;
                }
                let written = self
                    .ctx
                    .effects
                    .patch_pod(&pod, effects::release_ops(&pod))
                    .await;
                all_released &= self.remember(&mut memory, &pod, written, "release");
            }
        }
        if !all_released {
            return Err((
                "CleanupError",
                format!(
                    "KubervisorService {} is being deleted: some pods could not be handed back yet; retrying",
                    self.key()
                ),
            ));
        }
        let remaining: Vec<&String> = kvs
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .collect();
        let ops = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": kvs.finalizers()},
            {"op": "replace", "path": "/metadata/finalizers", "value": remaining},
        ]);
        self.patch_kvs(ops)
            .await
            .map_err(|e| ("FinalizerError", e))?;
        info!(kvs = %self.key(), "deleted: every pod got its traffic back");
        Ok(Phase::Running)
    }

    /// Writes the status when anything but probe times changed.
    async fn write_status(
        &self,
        kvs: &KubervisorService,
        condition: KubervisorServiceCondition,
        pod_count: Option<PodCountStatus>,
    ) -> Result<(), (&'static str, String)> {
        let now = Time(Timestamp::now());
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
        let mut conditions: Vec<KubervisorServiceCondition> = old
            .conditions
            .iter()
            .filter(|c| c.type_ != condition.type_)
            .cloned()
            .collect();
        conditions.push(condition);
        conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        let status = KubervisorServiceStatus {
            conditions,
            start_time: old.start_time.clone().or(Some(now.clone())),
            pod_count: pod_count
                .map(|c| PodCountStatus {
                    last_probe_time: Some(now.clone()),
                    ..c
                })
                .or(old.pod_count.clone()),
            observed_generation: kvs.metadata.generation,
        };
        if without_probe_times(&status) == without_probe_times(&old) {
            return Ok(());
        }
        let api: Api<KubervisorService> =
            Api::namespaced(self.ctx.effects.client().clone(), &self.namespace);
        let patch = json!({"status": status});
        let _slot = self.ctx.effects.write_slot().await;
        match api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err((
                "StatusError",
                format!(
                    "could not write the status of KubervisorService {}: {e}",
                    self.key()
                ),
            )),
        }
    }
}

fn resolve(entry: &KvsEntry) -> Result<ResolvedSpec, String> {
    if let Some(error) = &entry.decode_error {
        return Err(error.clone());
    }
    entry.object.spec.resolve().map_err(|e| e.to_string())
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

fn without_probe_times(status: &KubervisorServiceStatus) -> KubervisorServiceStatus {
    let mut status = status.clone();
    for c in &mut status.conditions {
        c.last_probe_time = None;
        c.last_transition_time = None;
    }
    if let Some(count) = &mut status.pod_count {
        count.last_probe_time = None;
    }
    status
}
