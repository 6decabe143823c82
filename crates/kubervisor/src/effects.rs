//! Effects: the only place that writes to the cluster, status and finalizer included.
//!
//! Every pod write carries a precondition (a JSON Patch `test` of the value the decision
//! was based on, or the resourceVersion), so the breaker, the activator, another replica
//! or a person editing the pod are never overwritten. A failed precondition is not an
//! error: the outcome goes back to the step, which decides again on its next input.

use std::convert::Infallible;
use std::sync::Arc;

use jiff::Timestamp;
use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::finalizer::{self, finalizer};
use kube::{Client, Resource};
use kubervisor_api::patch::{
    add, annotation, label, path, remove, replace, test, test_resource_version,
};
use kubervisor_api::pod::{
    BREAK_AT_ANNOTATION, MarksIn, NAME_LABEL, RETRY_COUNT_ANNOTATION, STRATEGY_LABEL,
    TRAFFIC_CONDITION, TRAFFIC_LABEL, Traffic, format_break_at,
};
use kubervisor_api::{KillMethod, KubervisorService, KubervisorServiceStatus};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::index::SlimPod;
use crate::plan::{FINALIZER, PodChange, PodWrite, Report};
use crate::telemetry::Metrics;

/// How a write ended.
#[derive(Debug)]
pub enum Written {
    /// Done; the pod as the API server returned it (`None` after a delete).
    Done(Option<SlimPod>),
    /// The pod changed since it was read (or is gone): decide again.
    Stale(String),
    /// A PodDisruptionBudget refused the eviction (429): try again later.
    Blocked(String),
    /// The API refused or could not be reached.
    Failed(String),
}

/// Writes to the cluster on behalf of the per-resource tasks.
#[derive(Clone)]
pub struct Effects {
    client: Client,
    /// The same API without the client's retries of 429: a PodDisruptionBudget's refusal
    /// is an answer to report and to try again on the next activator pass, not to wait on.
    evictions: Client,
    metrics: Arc<Metrics>,
    /// Writes in flight at once: a start-up burst (every pod of a large fleet adopted at
    /// once) then reuses a few connections to the API server instead of opening hundreds.
    writes: Arc<tokio::sync::Semaphore>,
    events: mpsc::Sender<Publication>,
}

/// API writes in flight at most.
const WRITES_IN_FLIGHT: usize = 32;
/// Events waiting to be published at most; past that, new ones are dropped with a warning.
const EVENTS_QUEUED: usize = 4096;
/// An event whose creation failed for a passing reason is sent again, waiting this long
/// first, twice as long each time up to the maximum, for this long at most.
const EVENT_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const EVENT_RETRY_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const EVENT_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// One event to publish, queued so that a slow events API never delays a decision.
struct Publication {
    regarding: ObjectReference,
    report: Report,
}

/// JSON Patch operations that set the given annotations, creating the map when the pod has none.
fn set_annotations(pod: &SlimPod, pairs: &[(&str, String)], ops: &mut Vec<PatchOperation>) {
    if pod.has_annotations {
        for (key, value) in pairs {
            ops.push(add(annotation(key), value.as_str()));
        }
    } else {
        // Creating the whole map is only safe if nothing was added meanwhile.
        ops.push(test_resource_version(&pod.resource_version));
        let map: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
            .collect();
        ops.push(add(path(["metadata", "annotations"]), map));
    }
}

/// Where a traffic-state mark (`kubervisor/traffic`, `kubervisor/strategy`) is kept.
fn mark(marks_in: MarksIn, key: &str) -> json_patch::jsonptr::PointerBuf {
    match marks_in {
        MarksIn::Labels => label(key),
        MarksIn::Annotations => annotation(key),
    }
}

/// The operations of an ejection: `traffic` from `yes` to `no`, with breaker, time and count.
pub fn eject_ops(
    pod: &SlimPod,
    marks_in: MarksIn,
    breaker: &str,
    retry_count: u32,
    now: Timestamp,
) -> Vec<PatchOperation> {
    let mut ops = vec![
        test(mark(marks_in, TRAFFIC_LABEL), Traffic::Yes.as_str()),
        replace(mark(marks_in, TRAFFIC_LABEL), Traffic::No.as_str()),
        add(mark(marks_in, STRATEGY_LABEL), breaker),
    ];
    set_annotations(
        pod,
        &[
            (BREAK_AT_ANNOTATION, format_break_at(now)),
            (RETRY_COUNT_ANNOTATION, retry_count.to_string()),
        ],
        &mut ops,
    );
    ops
}

/// The operations that move an ejected pod to `to`, only if it is still the same ejection.
pub fn from_ejected_ops(pod: &SlimPod, marks_in: MarksIn, to: Traffic) -> Vec<PatchOperation> {
    let mut ops = vec![test(mark(marks_in, TRAFFIC_LABEL), Traffic::No.as_str())];
    if let Some(at) = pod.annotations.get(BREAK_AT_ANNOTATION) {
        ops.push(test(annotation(BREAK_AT_ANNOTATION), at));
    }
    ops.push(replace(mark(marks_in, TRAFFIC_LABEL), to.as_str()));
    ops
}

/// The operations that reset a serving pod's retry count, only if it still serves since
/// the same ejection.
pub fn forget_ops(pod: &SlimPod, marks_in: MarksIn) -> Vec<PatchOperation> {
    let mut ops = vec![test(mark(marks_in, TRAFFIC_LABEL), Traffic::Yes.as_str())];
    if let Some(at) = pod.annotations.get(BREAK_AT_ANNOTATION) {
        ops.push(test(annotation(BREAK_AT_ANNOTATION), at));
    }
    ops.push(replace(annotation(RETRY_COUNT_ANNOTATION), "0"));
    ops
}

/// The operations that put a newly managed pod under `kvs`: traffic `yes` if absent, and the name label.
pub fn adopt_ops(pod: &SlimPod, marks_in: MarksIn, kvs: &str) -> Vec<PatchOperation> {
    let mut ops = Vec::new();
    let state = match marks_in {
        MarksIn::Labels => &pod.labels,
        MarksIn::Annotations => &pod.annotations,
    };
    match state.get(TRAFFIC_LABEL) {
        None => {
            ops.push(test_resource_version(&pod.resource_version));
            match marks_in {
                MarksIn::Labels => ops.push(add(label(TRAFFIC_LABEL), Traffic::Yes.as_str())),
                MarksIn::Annotations => set_annotations(
                    pod,
                    &[(TRAFFIC_LABEL, Traffic::Yes.as_str().to_string())],
                    &mut ops,
                ),
            }
        }
        Some(value) => ops.push(test(mark(marks_in, TRAFFIC_LABEL), value)),
    }
    ops.push(add(label(NAME_LABEL), kvs));
    ops
}

/// The operations that hand a pod back: traffic restored (never removed, since the
/// Service selector may still require it) and every other Kubervisor mark removed. A pod
/// of readiness-gate mode (its state in annotations) gets no traffic label.
pub fn release_ops(pod: &SlimPod) -> Vec<PatchOperation> {
    let mut ops = vec![test_resource_version(&pod.resource_version)];
    let gated =
        pod.annotations.contains_key(TRAFFIC_LABEL) && !pod.labels.contains_key(TRAFFIC_LABEL);
    if !gated {
        ops.push(add(label(TRAFFIC_LABEL), Traffic::Yes.as_str()));
    }
    for key in [NAME_LABEL, STRATEGY_LABEL] {
        if pod.labels.contains_key(key) {
            ops.push(remove(label(key)));
        }
    }
    for key in [
        BREAK_AT_ANNOTATION,
        RETRY_COUNT_ANNOTATION,
        TRAFFIC_LABEL,
        STRATEGY_LABEL,
    ] {
        if pod.annotations.contains_key(key) {
            ops.push(remove(annotation(key)));
        }
    }
    ops
}

/// A strategic merge patch of the pods/status subresource that sets the condition
/// `kubervisor.k8s.io/traffic`, only on the version of the pod that was read.
pub fn gate_patch(pod: &SlimPod, serve: bool, now: Timestamp) -> Value {
    let (status, reason, message) = if serve {
        ("True", "Serving", "Kubervisor lets the pod receive traffic")
    } else {
        (
            "False",
            "Ejected",
            "Kubervisor took the pod out of traffic; see the events of its KubervisorService",
        )
    };
    json!({
        "metadata": {"resourceVersion": pod.resource_version},
        "status": {"conditions": [{
            "type": TRAFFIC_CONDITION,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now.to_string(),
        }]},
    })
}

/// A reference to a pod, for events.
pub fn pod_reference(pod: &SlimPod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(pod.namespace.to_string()),
        name: Some(pod.name.to_string()),
        uid: Some(pod.uid.clone()).filter(|u| !u.is_empty()),
        ..Default::default()
    }
}

impl Effects {
    /// The executor, and the task that publishes its events (ended with the returned handle).
    pub fn new(
        client: Client,
        evictions: Client,
        reporter: Reporter,
        metrics: Arc<Metrics>,
    ) -> (Effects, tokio::task::JoinHandle<()>) {
        let (events, queue) = mpsc::channel(EVENTS_QUEUED);
        let effects = Effects {
            client,
            evictions,
            metrics,
            writes: Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT)),
            events,
        };
        let publisher = tokio::spawn(effects.clone().publish_queued(queue, reporter));
        (effects, publisher)
    }

    /// A slot for one API write; hold it while the write is in flight.
    async fn write_slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.writes
            .acquire()
            .await
            .expect("the write semaphore is never closed")
    }

    /// Carries out one pod change, with its precondition.
    pub async fn pod(&self, write: &PodWrite, kvs: &str) -> Written {
        let pod = &write.pod;
        let marks_in = write.marks_in;
        let ops = match &write.change {
            PodChange::Adopt => adopt_ops(pod, marks_in, kvs),
            PodChange::Release => return self.release(pod).await,
            PodChange::Eject {
                breaker,
                retry_count,
                at,
            } => eject_ops(pod, marks_in, breaker, *retry_count, *at),
            PodChange::Reinstate { to } => from_ejected_ops(pod, marks_in, *to),
            PodChange::ForgetRetries => forget_ops(pod, marks_in),
            PodChange::SetGate(serve) => return self.set_gate(pod, *serve).await,
            PodChange::Kill(KillMethod::Delete) => return self.delete_pod(pod).await,
            PodChange::Kill(KillMethod::Evict) => return self.evict_pod(pod).await,
        };
        self.patch_pod(pod, ops).await
    }

    /// Hands a pod back. A pod with Kubervisor's readiness gate gets the gate `True` first,
    /// so that it never stays unready once nothing manages it.
    pub async fn release(&self, pod: &SlimPod) -> Written {
        if pod.traffic_gate && pod.traffic_condition != Some(true) {
            match self.set_gate(pod, true).await {
                Written::Done(Some(after)) => {
                    return self.patch_pod(&after, release_ops(&after)).await;
                }
                other => return other,
            }
        }
        self.patch_pod(pod, release_ops(pod)).await
    }

    /// Sets the pod condition `kubervisor.k8s.io/traffic` through pods/status, only on the
    /// version of the pod that was read.
    async fn set_gate(&self, pod: &SlimPod, serve: bool) -> Written {
        let _slot = self.write_slot().await;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let patch = gate_patch(pod, serve, crate::clock::now());
        let written = match api
            .patch_status(
                &pod.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(pod) => Written::Done(Some(SlimPod::from_pod(&pod))),
            Err(e) => classify(&pod.namespace, &pod.name, e),
        };
        self.metrics.count_pod_write("status", outcome(&written));
        written
    }

    /// Applies a JSON Patch to a pod.
    pub async fn patch_pod(&self, pod: &SlimPod, ops: Vec<PatchOperation>) -> Written {
        let _slot = self.write_slot().await;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let result = api
            .patch(
                &pod.name,
                &PatchParams::default(),
                &Patch::<()>::Json(json_patch::Patch(ops)),
            )
            .await;
        let written = match result {
            Ok(pod) => Written::Done(Some(SlimPod::from_pod(&pod))),
            Err(e) => classify(&pod.namespace, &pod.name, e),
        };
        self.metrics.count_pod_write("patch", outcome(&written));
        written
    }

    /// Deletes a pod, only if it has not changed since it was read.
    async fn delete_pod(&self, pod: &SlimPod) -> Written {
        let _slot = self.write_slot().await;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(pod.resource_version.clone()),
                uid: Some(pod.uid.clone()).filter(|u| !u.is_empty()),
            }),
            ..DeleteParams::default()
        };
        let written = match api.delete(&pod.name, &params).await {
            Ok(_) => Written::Done(None),
            Err(e) => classify(&pod.namespace, &pod.name, e),
        };
        self.metrics.count_pod_write("delete", outcome(&written));
        written
    }

    /// Evicts a pod through the Eviction API (policy/v1), only if it has not changed since
    /// it was read. A PodDisruptionBudget may refuse it with 429.
    async fn evict_pod(&self, pod: &SlimPod) -> Written {
        let _slot = self.write_slot().await;
        // Built here rather than with `Api::evict`, which sends its options under a field
        // the API server ignores, so the preconditions would be lost.
        let body = eviction_body(pod);
        let request = http::Request::post(format!(
            "/api/v1/namespaces/{}/pods/{}/eviction",
            pod.namespace, pod.name
        ))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).expect("an eviction serialises"));
        let written = match request {
            Err(e) => Written::Failed(format!(
                "pod {}/{}: cannot build the eviction request: {e}",
                pod.namespace, pod.name
            )),
            Ok(request) => match self.evictions.request_text(request).await {
                Ok(_) => Written::Done(None),
                Err(kube::Error::Api(status)) if status.code == 429 => Written::Blocked(format!(
                    "eviction of pod {}/{} refused: {}",
                    pod.namespace, pod.name, status.message
                )),
                Err(e) => classify(&pod.namespace, &pod.name, e),
            },
        };
        self.metrics.count_pod_write("evict", outcome(&written));
        written
    }

    /// Writes a KubervisorService's status through the status subresource.
    pub async fn status(
        &self,
        kvs: &KubervisorService,
        status: &KubervisorServiceStatus,
    ) -> Result<(), String> {
        let (namespace, name) = key(kvs);
        let api: Api<KubervisorService> = Api::namespaced(self.client.clone(), &namespace);
        let patch = json!({"status": status});
        let _slot = self.write_slot().await;
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            // Gone meanwhile: its task ends on the next observation.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(format!(
                "could not write the status of KubervisorService {namespace}/{name}: {e}"
            )),
        }
    }

    /// Adds the finalizer to, or removes it from, this version of the resource, with
    /// kube-runtime's `finalizer` (a `test`-guarded JSON Patch). The cleanup it would run
    /// was already done by the step, which asks for the removal only once every pod got
    /// its traffic back.
    pub async fn finalizer(&self, kvs: Arc<KubervisorService>) -> Result<(), String> {
        let (namespace, name) = key(&kvs);
        let api: Api<KubervisorService> = Api::namespaced(self.client.clone(), &namespace);
        let _slot = self.write_slot().await;
        let done = |_| async { Ok::<_, Infallible>(Action::await_change()) };
        match finalizer(&api, FINALIZER, kvs, done).await {
            Ok(_) => Ok(()),
            // Changed or gone since it was read: the next observation decides again.
            Err(
                finalizer::Error::AddFinalizer(kube::Error::Api(s))
                | finalizer::Error::RemoveFinalizer(kube::Error::Api(s)),
            ) if matches!(s.code, 404 | 409 | 422) => {
                debug!(
                    "finalizer of KubervisorService {namespace}/{name} not changed, deciding again: {}",
                    s.message
                );
                Ok(())
            }
            Err(e) => Err(format!("KubervisorService {namespace}/{name}: {e}")),
        }
    }

    /// Queues an event on `kvs` (and on the pod the report names). Never waits: an event
    /// is a report, never a reason to stop acting.
    pub fn publish(&self, kvs: &KubervisorService, report: Report) {
        let publication = Publication {
            regarding: kvs.object_ref(&()),
            report,
        };
        if let Err(e) = self.events.try_send(publication) {
            let report = match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => {
                    p.report
                }
            };
            warn!(
                reason = report.note.reason(),
                "event queue full, event dropped: {}", report.note
            );
        }
    }

    async fn publish_queued(self, mut queue: mpsc::Receiver<Publication>, reporter: Reporter) {
        while let Some(Publication { regarding, report }) = queue.recv().await {
            // Each decision is its own event: kube's `Recorder` folds events with the same
            // reason and object into one series that keeps the first note, which would lose
            // the numbers of later decisions. Lasting states are reported once, so nothing floods.
            let note = truncate(report.note.to_string(), 1000);
            let event = EventText {
                warning: report.note.is_warning(),
                reason: report.note.reason(),
                action: report.note.action(),
                note: &note,
            };
            let related = report.pod.as_deref().map(pod_reference);
            self.create_event(&reporter, &regarding, related.as_ref(), &event)
                .await;
            if let Some(pod_ref) = related {
                self.create_event(&reporter, &pod_ref, Some(&regarding), &event)
                    .await;
            }
        }
    }

    async fn create_event(
        &self,
        reporter: &Reporter,
        regarding: &ObjectReference,
        related: Option<&ObjectReference>,
        text: &EventText<'_>,
    ) {
        let now = crate::clock::now();
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let event = Event {
            metadata: ObjectMeta {
                // The naming scheme of client-go: unique per object and instant.
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or("object"),
                    now.as_nanosecond()
                )),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(text.action.to_string()),
            reason: Some(text.reason.to_string()),
            note: Some(text.note.to_string()),
            type_: Some(if text.warning { "Warning" } else { "Normal" }.to_string()),
            regarding: Some(regarding.clone()),
            related: related.cloned(),
            reporting_controller: Some(reporter.controller.clone()),
            reporting_instance: Some(
                reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| reporter.controller.clone()),
            ),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        // A decision has exactly one event: one whose creation failed for a passing reason
        // (the API unreachable, a 5xx, a 429) is sent again under the same name, so an
        // attempt whose answer was lost shows as AlreadyExists, never as a second event.
        let mut wait = EVENT_RETRY_FIRST;
        let deadline = tokio::time::Instant::now() + EVENT_RETRY_FOR;
        loop {
            let result = {
                let _slot = self.write_slot().await;
                api.create(&PostParams::default(), &event).await
            };
            let passing = match &result {
                Ok(_) => return,
                Err(kube::Error::Api(status)) if status.code == 409 => return,
                Err(kube::Error::Api(status)) => status.code >= 500 || status.code == 429,
                Err(_) => true,
            };
            let Err(e) = result else { return };
            if !passing || tokio::time::Instant::now() + wait > deadline {
                warn!(reason = text.reason, object = ?regarding.name, error = %e, "could not publish an event");
                return;
            }
            debug!(reason = text.reason, object = ?regarding.name, error = %e, "event not published yet, trying again in {wait:?}");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(EVENT_RETRY_MAX_WAIT);
        }
    }
}

/// An event's rendered words.
struct EventText<'a> {
    warning: bool,
    reason: &'static str,
    action: &'static str,
    note: &'a str,
}

fn key(kvs: &KubervisorService) -> (String, String) {
    (
        kvs.meta().namespace.clone().unwrap_or_default(),
        kvs.meta().name.clone().unwrap_or_default(),
    )
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

fn outcome(written: &Written) -> &'static str {
    match written {
        Written::Done(_) => "ok",
        Written::Stale(_) => "conflict",
        Written::Blocked(_) => "blocked",
        Written::Failed(_) => "error",
    }
}

/// A policy/v1 Eviction of `pod`, with the pod as read as its precondition.
pub fn eviction_body(pod: &SlimPod) -> Value {
    let mut preconditions = json!({"resourceVersion": pod.resource_version});
    if !pod.uid.is_empty() {
        preconditions["uid"] = json!(pod.uid);
    }
    json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": &*pod.name, "namespace": &*pod.namespace},
        "deleteOptions": {"preconditions": preconditions},
    })
}

fn classify(namespace: &str, name: &str, error: kube::Error) -> Written {
    match &error {
        // 409: resourceVersion or uid precondition failed; 422: a JSON Patch test failed
        // (also the code for an invalid patch, but ours are built from what we read);
        // 404: the pod is gone.
        kube::Error::Api(status) if matches!(status.code, 409 | 422 | 404) => {
            Written::Stale(format!(
                "pod {namespace}/{name} changed since it was read: {}",
                status.message
            ))
        }
        _ => Written::Failed(format!("pod {namespace}/{name}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reporter() -> Reporter {
        Reporter {
            controller: "kubervisor".into(),
            instance: Some("test".into()),
        }
    }

    fn regarding_pod() -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some("default".into()),
            name: Some("web-1".into()),
            ..Default::default()
        }
    }

    async fn events_on(sim: &kubesim::Sim) -> Vec<Event> {
        Api::<Event>::namespaced(sim.client(), "default")
            .list(&Default::default())
            .await
            .unwrap()
            .items
    }

    /// Effects writing to a fresh kubesim, and its event publisher.
    async fn with_sim() -> (kubesim::Sim, Effects, tokio::task::JoinHandle<()>) {
        let sim = kubesim::Sim::start(kubesim::SimConfig::default())
            .await
            .unwrap();
        let (effects, publisher) = Effects::new(
            sim.client(),
            sim.client(),
            reporter(),
            Arc::new(Metrics::default()),
        );
        (sim, effects, publisher)
    }

    const EJECTED: EventText<'static> = EventText {
        warning: false,
        reason: "PodEjected",
        action: "Eject",
        note: "pod web-1 ejected",
    };

    #[tokio::test]
    async fn an_event_refused_by_passing_errors_is_published_once() {
        let (sim, effects, publisher) = with_sim().await;
        sim.faults().fail_next("create", "events", 1, 500);
        sim.faults().fail_next("create", "events", 1, 503);
        let text = EJECTED;
        effects
            .create_event(&reporter(), &regarding_pod(), None, &text)
            .await;
        let events = events_on(&sim).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].reason.as_deref(), Some("PodEjected"));
        publisher.abort();
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn an_event_refused_for_good_is_dropped_at_once() {
        let (sim, effects, publisher) = with_sim().await;
        sim.faults().fail_next("create", "events", 1, 403);
        let text = EJECTED;
        let started = std::time::Instant::now();
        effects
            .create_event(&reporter(), &regarding_pod(), None, &text)
            .await;
        assert!(started.elapsed() < EVENT_RETRY_FIRST, "not tried again");
        assert!(events_on(&sim).await.is_empty());
        publisher.abort();
        sim.shutdown().await;
    }

    fn slim(
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
        has_annotations: bool,
    ) -> SlimPod {
        SlimPod {
            namespace: "ns".into(),
            name: "web-1".into(),
            uid: "u1".into(),
            resource_version: "42".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            has_annotations,
            running: true,
            ready: true,
            terminating: false,
            containers_ready: true,
            traffic_gate: false,
            traffic_condition: None,
        }
    }

    /// Applies ops to a document the way the API server would.
    fn apply(doc: &mut Value, ops: Vec<PatchOperation>) -> Result<(), String> {
        json_patch::patch(doc, &ops).map_err(|e| e.to_string())
    }

    fn pod_doc(labels: Value, annotations: Option<Value>) -> Value {
        let mut metadata = json!({"name": "web-1", "resourceVersion": "42", "labels": labels});
        if let Some(a) = annotations {
            metadata["annotations"] = a;
        }
        json!({"metadata": metadata})
    }

    #[test]
    fn ejection_flips_traffic_records_breaker_time_and_count() {
        let now: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        let pod = slim(&[(TRAFFIC_LABEL, "yes")], &[], true);
        let mut doc = pod_doc(
            json!({"kubervisor/traffic": "yes", "app": "web"}),
            Some(json!({"other": "x"})),
        );
        apply(&mut doc, eject_ops(&pod, MarksIn::Labels, "errors", 1, now)).unwrap();
        assert_eq!(doc["metadata"]["labels"]["kubervisor/traffic"], "no");
        assert_eq!(doc["metadata"]["labels"]["kubervisor/strategy"], "errors");
        assert_eq!(
            doc["metadata"]["annotations"]["breaker/breakAt"],
            "2026-11-25T10:00:00Z"
        );
        assert_eq!(doc["metadata"]["annotations"]["breaker/retryCount"], "1");
        assert_eq!(doc["metadata"]["annotations"]["other"], "x");
    }

    #[test]
    fn ejection_of_a_pod_someone_already_changed_fails_its_test() {
        let now = Timestamp::UNIX_EPOCH;
        let pod = slim(&[(TRAFFIC_LABEL, "yes")], &[], true);
        let mut doc = pod_doc(json!({"kubervisor/traffic": "pause"}), Some(json!({})));
        assert!(apply(&mut doc, eject_ops(&pod, MarksIn::Labels, "b", 1, now)).is_err());
        assert_eq!(doc["metadata"]["labels"]["kubervisor/traffic"], "pause");
    }

    #[test]
    fn ejection_creates_the_annotation_map_only_if_the_pod_is_unchanged() {
        let now = Timestamp::UNIX_EPOCH;
        let pod = slim(&[(TRAFFIC_LABEL, "yes")], &[], false);
        let mut doc = pod_doc(json!({"kubervisor/traffic": "yes"}), None);
        apply(&mut doc, eject_ops(&pod, MarksIn::Labels, "b", 1, now)).unwrap();
        assert_eq!(doc["metadata"]["annotations"]["breaker/retryCount"], "1");
        // Someone added annotations meanwhile: the resourceVersion moved, the patch fails.
        let mut doc = pod_doc(
            json!({"kubervisor/traffic": "yes"}),
            Some(json!({"new": "1"})),
        );
        doc["metadata"]["resourceVersion"] = json!("43");
        assert!(apply(&mut doc, eject_ops(&pod, MarksIn::Labels, "b", 1, now)).is_err());
    }

    #[test]
    fn activation_applies_only_to_the_same_ejection() {
        let pod = slim(
            &[(TRAFFIC_LABEL, "no")],
            &[(BREAK_AT_ANNOTATION, "2026-11-25T10:00:00Z")],
            true,
        );
        let mut doc = pod_doc(
            json!({"kubervisor/traffic": "no"}),
            Some(json!({"breaker/breakAt": "2026-11-25T10:00:00Z"})),
        );
        apply(
            &mut doc,
            from_ejected_ops(&pod, MarksIn::Labels, Traffic::Yes),
        )
        .unwrap();
        assert_eq!(doc["metadata"]["labels"]["kubervisor/traffic"], "yes");
        // Re-ejected since it was read: a newer breakAt, so the activation does not apply.
        let mut doc = pod_doc(
            json!({"kubervisor/traffic": "no"}),
            Some(json!({"breaker/breakAt": "2026-11-25T11:00:00Z"})),
        );
        assert!(
            apply(
                &mut doc,
                from_ejected_ops(&pod, MarksIn::Labels, Traffic::Pause)
            )
            .is_err()
        );
    }

    #[test]
    fn forgetting_resets_the_count_only_for_the_same_ejection() {
        let pod = slim(
            &[(TRAFFIC_LABEL, "yes")],
            &[(BREAK_AT_ANNOTATION, "t1"), (RETRY_COUNT_ANNOTATION, "3")],
            true,
        );
        let mut doc = pod_doc(
            json!({"kubervisor/traffic": "yes"}),
            Some(json!({"breaker/breakAt": "t1", "breaker/retryCount": "3"})),
        );
        apply(&mut doc, forget_ops(&pod, MarksIn::Labels)).unwrap();
        assert_eq!(doc["metadata"]["annotations"]["breaker/retryCount"], "0");
        let mut ejected_again = pod_doc(
            json!({"kubervisor/traffic": "yes"}),
            Some(json!({"breaker/breakAt": "t2", "breaker/retryCount": "4"})),
        );
        assert!(apply(&mut ejected_again, forget_ops(&pod, MarksIn::Labels)).is_err());
    }

    #[test]
    fn adoption_adds_traffic_only_when_absent_and_names_the_owner() {
        let pod = slim(&[("app", "web")], &[], false);
        let mut doc = pod_doc(json!({"app": "web"}), None);
        apply(&mut doc, adopt_ops(&pod, MarksIn::Labels, "web")).unwrap();
        assert_eq!(
            doc["metadata"]["labels"],
            json!({"app": "web", "kubervisor/traffic": "yes", "kubervisor/name": "web"})
        );
        let pod = slim(&[("app", "web"), (TRAFFIC_LABEL, "no")], &[], false);
        let mut doc = pod_doc(json!({"app": "web", "kubervisor/traffic": "no"}), None);
        apply(&mut doc, adopt_ops(&pod, MarksIn::Labels, "web")).unwrap();
        assert_eq!(doc["metadata"]["labels"]["kubervisor/traffic"], "no");
    }

    #[test]
    fn release_restores_traffic_and_removes_every_other_mark() {
        let pod = slim(
            &[
                (TRAFFIC_LABEL, "pause"),
                (NAME_LABEL, "web"),
                (STRATEGY_LABEL, "b"),
                ("app", "web"),
            ],
            &[(BREAK_AT_ANNOTATION, "t"), (RETRY_COUNT_ANNOTATION, "3")],
            true,
        );
        let mut doc = pod_doc(
            json!({"kubervisor/traffic": "pause", "kubervisor/name": "web", "kubervisor/strategy": "b", "app": "web"}),
            Some(json!({"breaker/breakAt": "t", "breaker/retryCount": "3", "keep": "me"})),
        );
        apply(&mut doc, release_ops(&pod)).unwrap();
        assert_eq!(
            doc["metadata"]["labels"],
            json!({"kubervisor/traffic": "yes", "app": "web"})
        );
        assert_eq!(doc["metadata"]["annotations"], json!({"keep": "me"}));
    }
}
