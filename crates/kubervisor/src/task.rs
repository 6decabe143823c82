//! One task per KubervisorService. It owns the resource's [`State`], feeds the step
//! ([`crate::plan`]) with what the index shows, what the sources answer and what the
//! writes return, and carries out the effects. Nothing is shared with other tasks but the
//! index (read-only here) and the executor.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use kubervisor_api::pod::NAME_LABEL;
use kubervisor_api::{Detection, KubervisorService, KubervisorServiceStatus, ResolvedSpec};
use kubervisor_core::detect::Findings;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::effects::{Effects, Written};
use crate::index::{Index, SlimPod, Subscription};
use crate::labels::Labels;
use crate::plan::{Effect, Input, Observed, Phase, PodWrite, State, plan};
use crate::source::{SourceError, Sources};
use crate::telemetry::Metrics;

/// How often tasks look again when nothing wakes them.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Fewest time between two observations of one resource.
    pub reconcile_min_interval: Duration,
    /// An observation happens at least this often, changes or not.
    pub resync: Duration,
    /// How soon the activator looks again at a pod it could not act on yet.
    pub activator_period: Duration,
    /// How long a pod's decision counters outlive the pod.
    pub pod_metrics_retention: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            reconcile_min_interval: Duration::from_millis(200),
            resync: Duration::from_secs(10),
            activator_period: Duration::from_secs(1),
            pod_metrics_retention: crate::telemetry::DECISIONS_KEPT_AFTER_POD,
        }
    }
}

/// What every task shares.
pub struct Context {
    pub index: Arc<Index>,
    pub effects: Effects,
    pub sources: Sources,
    pub metrics: Arc<Metrics>,
    pub timing: Timing,
}

/// Pod writes of one resource in flight at once; more wait their turn.
const WRITES_IN_FLIGHT: usize = 16;

/// Writes one resource's status in the background, the latest asked for only, one write
/// at a time: a status is a report, and an API that throttles it (429, retried as told)
/// must not hold up the decisions of the task (it held a due re-activation for 9 s). The
/// task polls the write beside its other work rather than in a task of its own: a spawned
/// writer per resource cost a task, a channel and a lock even while idle.
#[derive(Default)]
struct StatusWrites {
    on_its_way: Option<BoxFuture<'static, Result<(), String>>>,
    /// The status asked for while another write was on its way: the latest only.
    next: Option<(Arc<KubervisorService>, Box<KubervisorServiceStatus>)>,
    /// Why the last write failed, reported with the next step.
    failed: Option<&'static str>,
}

impl StatusWrites {
    fn write(
        &mut self,
        ctx: &Arc<Context>,
        kvs: Arc<KubervisorService>,
        status: Box<KubervisorServiceStatus>,
    ) {
        self.next = Some((kvs, status));
        self.start(ctx);
    }

    /// Starts the write asked for, unless one is on its way.
    fn start(&mut self, ctx: &Arc<Context>) {
        if self.on_its_way.is_some() {
            return;
        }
        let Some((kvs, status)) = self.next.take() else {
            return;
        };
        let ctx = ctx.clone();
        let write = async move { ctx.effects.status(&kvs, &status).await };
        self.on_its_way = Some(write.in_current_span().boxed());
    }

    /// Waits for the write on its way to come back (pending forever when none is), then
    /// starts the next one asked for.
    async fn next(&mut self, ctx: &Arc<Context>) {
        let Some(write) = self.on_its_way.as_mut() else {
            return std::future::pending().await;
        };
        let outcome = write.await;
        self.on_its_way = None;
        if let Err(e) = outcome {
            warn!("{e}");
            self.failed = Some("StatusError");
        }
        self.start(ctx);
    }
}

type Query = BoxFuture<'static, (String, Result<Findings, SourceError>, Duration)>;

/// Pod writes on their way, and those waiting for room. The step goes on deciding while
/// they are (it sees an ejection on its way as done: [`crate::plan`]); their outcomes are
/// fed one by one as they come back.
///
/// The finalizer is written the same way, ahead of the pod writes: breakers are queried
/// while it is on its way (at 100,000 pods a new resource's finalizer queues behind the
/// fleet's adoption patches), and pods are written once it is back, as before, so a
/// resource never changes a pod before its finalizer was asked for.
#[derive(Default)]
struct Writes {
    /// `None` when nothing is on its way: an idle task holds no queue.
    in_flight: Option<FuturesUnordered<BoxFuture<'static, Input>>>,
    waiting: VecDeque<PodWrite>,
    /// The finalizer write on its way (its failure's reason when it fails).
    finalizer: Option<BoxFuture<'static, Option<&'static str>>>,
    /// The finalizer write asked for while another was on its way: the latest version.
    next_finalizer: Option<Arc<KubervisorService>>,
    /// Why the last finalizer write failed, reported with the next step.
    finalizer_failed: Option<&'static str>,
}

impl Writes {
    fn is_empty(&self) -> bool {
        self.in_flight.is_none()
            && self.waiting.is_empty()
            && self.finalizer.is_none()
            && self.next_finalizer.is_none()
    }

    /// Asks for the finalizer on this version of the resource.
    fn add_finalizer(&mut self, kvs: Arc<KubervisorService>) {
        self.next_finalizer = Some(kvs);
    }

    /// Starts the finalizer write asked for, or else waiting pod writes while there is room.
    fn start(&mut self, ctx: &Arc<Context>, name: &str) {
        if self.finalizer.is_none()
            && let Some(kvs) = self.next_finalizer.take()
        {
            let ctx = ctx.clone();
            let write = async move {
                let failed = ctx.effects.finalizer(kvs).await.err();
                failed.map(|e| {
                    warn!("{e}");
                    "FinalizerError"
                })
            };
            self.finalizer = Some(write.in_current_span().boxed());
        }
        if self.finalizer.is_some() {
            return;
        }
        if self.waiting.is_empty() && self.waiting.capacity() > 0 {
            // An adoption's burst would otherwise keep its room in every idle task.
            self.waiting = VecDeque::new();
        }
        while self.in_flight.as_ref().map_or(0, |w| w.len()) < WRITES_IN_FLIGHT {
            let Some(write) = self.waiting.pop_front() else {
                break;
            };
            let ctx = ctx.clone();
            let name = name.to_string();
            let write = async move {
                let outcome = ctx.effects.pod(&write, &name).await;
                match &outcome {
                    Written::Done(_) => {}
                    Written::Stale(why) => debug!("{why}; deciding again"),
                    Written::Blocked(why) => {
                        info!("{why}; trying again on the next activator pass")
                    }
                    Written::Failed(why) => warn!("{why}"),
                }
                Input::Written {
                    pod: write.pod.name.to_string(),
                    outcome,
                }
            };
            self.in_flight
                .get_or_insert_with(FuturesUnordered::new)
                .push(write.in_current_span().boxed());
        }
    }

    /// The next pod write's outcome, or `None` when the finalizer write came back (start
    /// the writes again then); pending forever when nothing is on its way.
    async fn next(&mut self) -> Option<Input> {
        let Writes {
            in_flight,
            finalizer,
            finalizer_failed,
            ..
        } = self;
        tokio::select! {
            failed = async { finalizer.as_mut().expect("checked by the guard").await }, if finalizer.is_some() => {
                *finalizer = None;
                *finalizer_failed = finalizer_failed.or(failed);
                None
            }
            Some(outcome) = async { in_flight.as_mut().expect("checked by the guard").next().await }, if in_flight.is_some() => {
                if in_flight.as_ref().is_some_and(|w| w.is_empty()) {
                    *in_flight = None;
                }
                Some(outcome)
            }
            else => std::future::pending().await,
        }
    }

    /// Waits for the writes on their way, and drops those not started.
    async fn finish(&mut self) {
        self.waiting.clear();
        self.next_finalizer = None;
        if let Some(finalizer) = self.finalizer.take() {
            finalizer.await;
        }
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.for_each(|_| async {}).await;
        }
    }
}

/// Runs the task of one KubervisorService until the resource is gone; abort it to stop sooner.
pub async fn run(ctx: Arc<Context>, namespace: String, name: String) {
    let span = info_span!("kvs", namespace = %namespace, name = %name);
    Box::new(Task::new(ctx, namespace, name))
        .run()
        .instrument(span)
        .await
}

struct Task {
    ctx: Arc<Context>,
    namespace: String,
    name: String,
    /// Always `Some` between steps; taken while a step runs.
    state: Option<State>,
    /// Changes when something the observation reads changes.
    subscription: Subscription,
    /// The spec the breaker timers follow.
    spec: Option<Arc<ResolvedSpec>>,
    /// Each breaker's timer, in the spec's order.
    timers: Vec<Timer>,
    /// Queries under way, at most one per breaker; `None` when there is none.
    queries: Option<FuturesUnordered<Query>>,
    /// When the next observation is due.
    observe_at: Instant,
    last_observed: Option<Instant>,
    /// When the activator last ran, on the clock the step sees and on the monotonic one.
    activator_ran: Option<(Timestamp, Instant)>,
    status: StatusWrites,
    writes: Writes,
}

/// When a breaker evaluates next, and whether its query is under way.
struct Timer {
    breaker: String,
    next: Instant,
    querying: bool,
}

impl Task {
    fn new(ctx: Arc<Context>, namespace: String, name: String) -> Task {
        let subscription = ctx.index.subscribe(&namespace, &name);
        Task {
            state: Some(State::new(&namespace, &name)),
            ctx,
            namespace,
            name,
            subscription,
            spec: None,
            timers: Vec::new(),
            queries: None,
            observe_at: Instant::now(),
            last_observed: None,
            activator_ran: None,
            status: StatusWrites::default(),
            writes: Writes::default(),
        }
    }

    fn state(&self) -> &State {
        self.state.as_ref().expect("state is back after every step")
    }

    async fn run(mut self: Box<Self>) {
        loop {
            if *self.state().phase() == Phase::Finished {
                // Not cut off halfway: a write on its way is let come back.
                self.writes.finish().await;
                break;
            }
            self.follow_spec();
            let now = Instant::now();
            let wake = [
                Some(self.observe_at),
                self.timers.iter().map(|t| t.next).min(),
                self.activator_wake(now).filter(|_| self.writes.is_empty()),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.observe_at);
            tokio::select! {
                changed = self.subscription.changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Debounced: a burst of changes is observed once.
                    let earliest = self.last_observed.map_or(now, |at| at + self.ctx.timing.reconcile_min_interval);
                    self.observe_at = self.observe_at.min(earliest.max(now));
                }
                Some((breaker, result, took)) = async { self.queries.as_mut().expect("checked by the guard").next().await }, if self.queries.is_some() => {
                    if self.queries.as_ref().is_some_and(|q| q.is_empty()) {
                        self.queries = None;
                    }
                    if let Some(timer) = self.timers.iter_mut().find(|t| t.breaker == breaker) {
                        timer.querying = false;
                    }
                    // Boxed: an idle task then holds a few bytes, not a whole step's state.
                    Box::pin(self.answered(breaker, result, took)).await;
                }
                () = self.status.next(&self.ctx) => {}
                outcome = self.writes.next() => {
                    self.writes.start(&self.ctx, &self.name);
                    if let Some(outcome) = outcome {
                        Box::pin(self.feed(outcome)).await;
                    }
                }
                _ = tokio::time::sleep_until(wake) => Box::pin(self.due(Instant::now())).await,
            }
        }
        self.ctx.metrics.forget(&self.namespace, &self.name);
    }

    /// Does whatever has come due: an observation, breaker queries, the activator.
    async fn due(&mut self, now: Instant) {
        if self.observe_at <= now {
            self.observe().await;
        }
        let due: Vec<String> = self
            .timers
            .iter()
            .filter(|t| t.next <= now)
            .map(|t| t.breaker.clone())
            .collect();
        for breaker in due {
            self.start_query(&breaker, now);
        }
        // The activator waits for the writes on their way: what it gives back is
        // counted on pods whose adoption and ejections are done.
        if self.writes.is_empty() && self.activator_wake(now).is_some_and(|at| at <= now) {
            self.refresh().await;
            self.activator_ran = Some((crate::clock::now(), now));
            self.feed(Input::ActivatorDue).await;
        }
    }

    /// Re-reads the index and feeds what it shows.
    async fn observe(&mut self) {
        let started = Instant::now();
        self.subscription.changes.borrow_and_update();
        self.last_observed = Some(started);
        self.observe_at = started + self.ctx.timing.resync;
        let observed = self.observed();
        let error = self.feed(Input::Observed(observed)).await;
        self.ctx
            .metrics
            .observe_reconcile(&self.namespace, &self.name, started.elapsed(), error);
    }

    /// Feeds a fresh observation first if the index changed since the last one, so that
    /// no decision is taken on a view older than the index.
    async fn refresh(&mut self) {
        if self.subscription.changes.has_changed().unwrap_or(false) {
            self.observe().await;
        }
    }

    /// What the index shows of this resource, its Service and its pods.
    fn observed(&self) -> Observed {
        let index = &self.ctx.index;
        let Some(entry) = index.kvs(&self.namespace, &self.name) else {
            self.subscription.follow(None, None);
            return Observed::default();
        };
        let service = index.service(&self.namespace, &entry.object.spec.service);
        let selector = service.as_ref().and_then(|s| s.managed_selector());
        // Before the pods are read: a pod changed after the read then wakes the task.
        self.subscription
            .follow(Some(&entry.object.spec.service), selector.as_ref());
        let managed = selector
            .map(|selector| {
                index
                    .pods_matching(&self.namespace, &selector)
                    .into_iter()
                    .filter(|pod| self.is_mine(pod))
                    .collect()
            })
            .unwrap_or_default();
        let mine = Labels::from_pairs([(NAME_LABEL, self.name.as_str())]);
        Observed {
            labelled: index.pods_matching(&self.namespace, &mine),
            kvs: Some(entry),
            service,
            managed,
        }
    }

    /// A pod matching the selector is ours unless another existing KubervisorService claimed it.
    fn is_mine(&self, pod: &SlimPod) -> bool {
        match pod.labels.get(NAME_LABEL) {
            None => true,
            Some(owner) if *owner == self.name => true,
            Some(owner) => self.ctx.index.kvs(&self.namespace, owner).is_none(),
        }
    }

    /// Restarts the breaker timers when the running spec changed; every breaker then
    /// evaluates at once.
    fn follow_spec(&mut self) {
        let running = self.state().running_spec().cloned();
        if running == self.spec {
            // The same spec (compared by value): kept as the step holds it, so that the
            // task and the step never hold two copies.
            self.spec = running;
            return;
        }
        if self.spec.is_some() && running.is_some() {
            info!("spec changed: restarting breaker evaluations");
        }
        let now = Instant::now();
        self.timers = running
            .iter()
            .flat_map(|spec| spec.breakers.iter())
            .map(|b| Timer {
                breaker: b.name.clone(),
                next: now,
                querying: false,
            })
            .collect();
        self.timers.shrink_to_fit();
        // Answers to queries of an older spec would judge by the old rules.
        self.queries = None;
        self.spec = running;
    }

    fn start_query(&mut self, name: &str, now: Instant) {
        let found = self.spec.as_ref().and_then(|spec| {
            let i = spec.breakers.iter().position(|b| b.name == name)?;
            Some((spec.clone(), i))
        });
        let Some((spec, i)) = found else {
            self.timers.retain(|t| t.breaker != name);
            return;
        };
        let period = spec.breakers[i].evaluation_period;
        let Some(timer) = self.timers.iter_mut().find(|t| t.breaker == name) else {
            return;
        };
        // A slow source delays its own next evaluation, never the others'.
        timer.next = now + period;
        if std::mem::replace(&mut timer.querying, true) {
            return;
        }
        let sources = self.ctx.sources.clone();
        self.queries.get_or_insert_with(FuturesUnordered::new).push(
            async move {
                let started = Instant::now();
                let breaker = &spec.breakers[i];
                let result = sources.findings(&breaker.detection, period).await;
                (breaker.name.clone(), result, started.elapsed())
            }
            .boxed(),
        );
    }

    async fn answered(
        &mut self,
        breaker: String,
        result: Result<Findings, SourceError>,
        took: Duration,
    ) {
        let source = self
            .spec
            .as_ref()
            .and_then(|spec| spec.breakers.iter().find(|b| b.name == breaker))
            .map_or("prometheus", |b| match b.detection {
                Detection::Custom(_) => "custom",
                _ => "prometheus",
            });
        self.ctx
            .metrics
            .observe_source(source, took, result.as_ref().err().map(|e| e.kind()));
        let answered = Instant::now();
        let ok = result.is_ok();
        match &result {
            Ok(findings) => debug!(
                breaker = %breaker,
                anomalies = findings.anomalies.len(),
                healthy = findings.healthy.len(),
                "breaker evaluated"
            ),
            Err(e) => debug!(breaker = %breaker, "source error: {e}"),
        }
        self.refresh().await;
        self.feed(Input::Findings { breaker, result }).await;
        self.ctx
            .metrics
            .observe_evaluation(ok.then(|| answered.elapsed()));
    }

    /// When the activator must run: when the earliest ejected pod is due, or, for a pod
    /// already due that it could not act on, one activator period after its last run.
    fn activator_wake(&self, now: Instant) -> Option<Instant> {
        let due = self.state().activator_due()?;
        match self.activator_ran {
            // Counted on the monotonic clock: a wall clock stepped back since the last run
            // must not put the next one off by the step.
            Some((ran, ran_at)) if due <= ran => Some(ran_at + self.ctx.timing.activator_period),
            _ => {
                let wait = due.duration_since(crate::clock::now());
                Some(now + Duration::try_from(wait).unwrap_or_default())
            }
        }
    }

    /// Runs the step on `input` and carries out its effects; pod writes are started, and
    /// their outcomes fed when they come back. Returns the reason of a failed status or
    /// finalizer write.
    async fn feed(&mut self, input: Input) -> Option<&'static str> {
        let state = self.state.take().expect("state is back after every step");
        let (state, effects) = plan(state, input, crate::clock::now());
        self.state = Some(state);
        let kvs = self.state().resource().cloned();
        let failed = execute(
            &self.ctx,
            &mut self.status,
            &mut self.writes,
            &self.namespace,
            &self.name,
            kvs,
            effects,
        )
        .await;
        self.writes.start(&self.ctx, &self.name);
        failed
            .or(self.status.failed.take())
            .or(self.writes.finalizer_failed.take())
    }
}

/// Carries out the effects of one step: pod writes and the finalizer's addition queued
/// (the task starts them), the status in the background, the rest in order. Returns the
/// reason of a failed finalizer removal.
async fn execute(
    ctx: &Arc<Context>,
    status_writes: &mut StatusWrites,
    writes: &mut Writes,
    namespace: &str,
    name: &str,
    kvs: Option<Arc<KubervisorService>>,
    effects: Vec<Effect>,
) -> Option<&'static str> {
    let mut error = None;
    for effect in effects {
        match effect {
            Effect::Pod(write) => writes.waiting.push_back(write),
            Effect::Publish(report) => {
                if report.note.is_warning() {
                    warn!(reason = report.note.reason(), "{}", report.note);
                } else {
                    info!(reason = report.note.reason(), "{}", report.note);
                }
                if let Some(kvs) = &kvs {
                    ctx.effects.publish(kvs, report);
                }
            }
            Effect::Status(status) => {
                if let Some(kvs) = &kvs {
                    status_writes.write(ctx, kvs.clone(), status);
                }
            }
            Effect::AddFinalizer(object) => writes.add_finalizer(object),
            Effect::RemoveFinalizer(object) => {
                // The last write of a resource being deleted, once every pod got its traffic
                // back: awaited, and an addition not yet sent is moot.
                writes.next_finalizer = None;
                if let Err(e) = ctx.effects.finalizer(object).await {
                    warn!("{e}");
                    error = Some("FinalizerError");
                }
            }
            Effect::CountDecision {
                breaker,
                pod,
                kind,
                dry_run,
            } => {
                let kind = if dry_run {
                    format!("dryrun_{}", kind.as_str())
                } else {
                    kind.as_str().to_string()
                };
                ctx.metrics.count_decision(&breaker, namespace, &pod, &kind);
            }
            Effect::BreakerState { breaker, state } => ctx
                .metrics
                .set_breaker_state(namespace, name, &breaker, state),
            Effect::PodCounts(counts) => ctx.metrics.set_pod_counts(
                namespace,
                name,
                counts.managed as usize,
                counts.broken as usize,
                counts.paused as usize,
                counts.unknown as usize,
            ),
        }
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `F` returns, without calling it.
    fn future_size<A, B, C, F, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// One task runs per KubervisorService for as long as the resource exists: its future
    /// holds the task by pointer. By value, the future held it twice (3 KiB a resource).
    #[test]
    fn a_task_future_holds_its_state_by_pointer() {
        let size = future_size(run);
        assert!(size < 1024, "{size} bytes");
    }
}
