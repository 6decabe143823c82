//! Effects: the only place that writes to the cluster.
//!
//! Every pod write carries a precondition (a JSON Patch `test` of the value the decision
//! was based on, or the resourceVersion), so the breaker, the activator, another replica
//! or a person editing the pod are never overwritten. A failed precondition is not an
//! error: the loop re-reads and re-decides on its next tick.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::Reporter;
use kubervisor_api::pod::{
    BREAK_AT_ANNOTATION, NAME_LABEL, RETRY_COUNT_ANNOTATION, STRATEGY_LABEL, TRAFFIC_LABEL,
    Traffic, format_break_at,
};
use serde_json::{Value, json};
use tracing::warn;

use crate::index::SlimPod;
use crate::telemetry::Metrics;

/// How a write ended.
#[derive(Debug)]
pub enum Written {
    /// Done; the pod as the API server returned it (`None` after a delete).
    Done(Option<SlimPod>),
    /// The pod changed since it was read (or is gone): decide again next tick.
    Stale(String),
    /// The API refused or could not be reached.
    Failed(String),
}

/// Writes to pods, and publishes events, on behalf of the loops.
#[derive(Clone)]
pub struct Effects {
    client: Client,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    /// Writes in flight at once: a start-up burst (every pod of a large fleet adopted at
    /// once) then reuses a few connections to the API server instead of opening hundreds.
    writes: Arc<tokio::sync::Semaphore>,
}

/// API writes in flight at most.
const WRITES_IN_FLIGHT: usize = 32;

fn pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn label_path(key: &str) -> String {
    format!("/metadata/labels/{}", pointer(key))
}

fn annotation_path(key: &str) -> String {
    format!("/metadata/annotations/{}", pointer(key))
}

/// JSON Patch operations that set the given annotations, creating the map when the pod has none.
fn set_annotations(pod: &SlimPod, pairs: &[(&str, String)], ops: &mut Vec<Value>) {
    if pod.has_annotations {
        for (key, value) in pairs {
            ops.push(json!({"op": "add", "path": annotation_path(key), "value": value}));
        }
    } else {
        // Creating the whole map is only safe if nothing was added meanwhile.
        ops.push(json!({"op": "test", "path": "/metadata/resourceVersion", "value": pod.resource_version}));
        let map: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
            .collect();
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": map}));
    }
}

/// The operations of an ejection: `traffic` from `yes` to `no`, with breaker, time and count.
pub fn eject_ops(pod: &SlimPod, breaker: &str, retry_count: u32, now: Timestamp) -> Vec<Value> {
    let mut ops = vec![
        json!({"op": "test", "path": label_path(TRAFFIC_LABEL), "value": Traffic::Yes.as_str()}),
        json!({"op": "replace", "path": label_path(TRAFFIC_LABEL), "value": Traffic::No.as_str()}),
        json!({"op": "add", "path": label_path(STRATEGY_LABEL), "value": breaker}),
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
pub fn from_ejected_ops(pod: &SlimPod, to: Traffic) -> Vec<Value> {
    let mut ops = vec![
        json!({"op": "test", "path": label_path(TRAFFIC_LABEL), "value": Traffic::No.as_str()}),
    ];
    if let Some(at) = pod.annotations.get(BREAK_AT_ANNOTATION) {
        ops.push(json!({"op": "test", "path": annotation_path(BREAK_AT_ANNOTATION), "value": at}));
    }
    ops.push(json!({"op": "replace", "path": label_path(TRAFFIC_LABEL), "value": to.as_str()}));
    ops
}

/// The operations that put a newly managed pod under `kvs`: traffic `yes` if absent, and the name label.
pub fn adopt_ops(pod: &SlimPod, kvs: &str) -> Vec<Value> {
    let mut ops = Vec::new();
    match pod.labels.get(TRAFFIC_LABEL) {
        None => {
            ops.push(json!({"op": "test", "path": "/metadata/resourceVersion", "value": pod.resource_version}));
            ops.push(json!({"op": "add", "path": label_path(TRAFFIC_LABEL), "value": Traffic::Yes.as_str()}));
        }
        Some(value) => {
            ops.push(json!({"op": "test", "path": label_path(TRAFFIC_LABEL), "value": value}));
        }
    }
    ops.push(json!({"op": "add", "path": label_path(NAME_LABEL), "value": kvs}));
    ops
}

/// The operations that hand a pod back: traffic restored (never removed, since the
/// Service selector may still require it) and every other Kubervisor mark removed.
pub fn release_ops(pod: &SlimPod) -> Vec<Value> {
    let mut ops = vec![
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": pod.resource_version}),
    ];
    ops.push(
        json!({"op": "add", "path": label_path(TRAFFIC_LABEL), "value": Traffic::Yes.as_str()}),
    );
    for key in [NAME_LABEL, STRATEGY_LABEL] {
        if pod.labels.contains_key(key) {
            ops.push(json!({"op": "remove", "path": label_path(key)}));
        }
    }
    for key in [BREAK_AT_ANNOTATION, RETRY_COUNT_ANNOTATION] {
        if pod.annotations.contains_key(key) {
            ops.push(json!({"op": "remove", "path": annotation_path(key)}));
        }
    }
    ops
}

/// Whether a pod carries nothing of Kubervisor but `traffic=yes` (or no traffic label).
pub fn is_released(pod: &SlimPod) -> bool {
    matches!(
        pod.labels.get(TRAFFIC_LABEL).map(String::as_str),
        None | Some("yes")
    ) && !pod.labels.contains_key(NAME_LABEL)
        && !pod.labels.contains_key(STRATEGY_LABEL)
        && pod.annotations.is_empty()
}

/// A reference to a pod, for events.
pub fn pod_reference(pod: &SlimPod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(pod.namespace.clone()),
        name: Some(pod.name.clone()),
        uid: Some(pod.uid.clone()).filter(|u| !u.is_empty()),
        ..Default::default()
    }
}

impl Effects {
    pub fn new(client: Client, reporter: Reporter, metrics: Arc<Metrics>) -> Effects {
        Effects {
            client,
            reporter,
            metrics,
            writes: Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT)),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A slot for one API write; hold it while the write is in flight.
    pub async fn write_slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.writes
            .acquire()
            .await
            .expect("the write semaphore is never closed")
    }

    /// Applies a JSON Patch to a pod.
    pub async fn patch_pod(&self, pod: &SlimPod, ops: Vec<Value>) -> Written {
        let _slot = self.write_slot().await;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let patch: json_patch::Patch = match serde_json::from_value(Value::Array(ops)) {
            Ok(patch) => patch,
            Err(e) => return Written::Failed(format!("internal error building a patch: {e}")),
        };
        let result = api
            .patch(
                &pod.name,
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
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
    pub async fn delete_pod(&self, pod: &SlimPod) -> Written {
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

    /// Publishes an event on `regarding` (and, when given, on a pod too). Failures are logged only:
    /// an event is a report, never a reason to stop acting.
    ///
    /// Each decision is its own event: kube's `Recorder` folds events with the same reason
    /// and object into one series that keeps the first note, which would lose the numbers
    /// of later decisions. Callers report lasting states once, so nothing floods.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        pod: Option<&SlimPod>,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let note = truncate(note, 1000);
        let related = pod.map(pod_reference);
        self.create_event(regarding, related.as_ref(), warning, reason, action, &note)
            .await;
        if let Some(pod_ref) = related {
            self.create_event(&pod_ref, Some(regarding), warning, reason, action, &note)
                .await;
        }
    }

    async fn create_event(
        &self,
        regarding: &ObjectReference,
        related: Option<&ObjectReference>,
        warning: bool,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let now = Timestamp::now();
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
            action: Some(action.to_string()),
            reason: Some(reason.to_string()),
            note: Some(note.to_string()),
            type_: Some(if warning { "Warning" } else { "Normal" }.to_string()),
            regarding: Some(regarding.clone()),
            related: related.cloned(),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let _slot = self.write_slot().await;
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            warn!(reason, object = ?regarding.name, error = %e, "could not publish an event");
        }
    }
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
        Written::Failed(_) => "error",
    }
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
    use std::collections::BTreeMap;

    use super::*;

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
        }
    }

    /// Applies ops to a document the way the API server would.
    fn apply(doc: &mut Value, ops: Vec<Value>) -> Result<(), String> {
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        json_patch::patch(doc, &patch).map_err(|e| e.to_string())
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
        apply(&mut doc, eject_ops(&pod, "errors", 1, now)).unwrap();
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
        assert!(apply(&mut doc, eject_ops(&pod, "b", 1, now)).is_err());
        assert_eq!(doc["metadata"]["labels"]["kubervisor/traffic"], "pause");
    }

    #[test]
    fn ejection_creates_the_annotation_map_only_if_the_pod_is_unchanged() {
        let now = Timestamp::UNIX_EPOCH;
        let pod = slim(&[(TRAFFIC_LABEL, "yes")], &[], false);
        let mut doc = pod_doc(json!({"kubervisor/traffic": "yes"}), None);
        apply(&mut doc, eject_ops(&pod, "b", 1, now)).unwrap();
        assert_eq!(doc["metadata"]["annotations"]["breaker/retryCount"], "1");
        // Someone added annotations meanwhile: the resourceVersion moved, the patch fails.
        let mut doc = pod_doc(
            json!({"kubervisor/traffic": "yes"}),
            Some(json!({"new": "1"})),
        );
        doc["metadata"]["resourceVersion"] = json!("43");
        assert!(apply(&mut doc, eject_ops(&pod, "b", 1, now)).is_err());
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
        apply(&mut doc, from_ejected_ops(&pod, Traffic::Yes)).unwrap();
        assert_eq!(doc["metadata"]["labels"]["kubervisor/traffic"], "yes");
        // Re-ejected since it was read: a newer breakAt, so the activation does not apply.
        let mut doc = pod_doc(
            json!({"kubervisor/traffic": "no"}),
            Some(json!({"breaker/breakAt": "2026-11-25T11:00:00Z"})),
        );
        assert!(apply(&mut doc, from_ejected_ops(&pod, Traffic::Pause)).is_err());
    }

    #[test]
    fn adoption_adds_traffic_only_when_absent_and_names_the_owner() {
        let pod = slim(&[("app", "web")], &[], false);
        let mut doc = pod_doc(json!({"app": "web"}), None);
        apply(&mut doc, adopt_ops(&pod, "web")).unwrap();
        assert_eq!(
            doc["metadata"]["labels"],
            json!({"app": "web", "kubervisor/traffic": "yes", "kubervisor/name": "web"})
        );
        let pod = slim(&[("app", "web"), (TRAFFIC_LABEL, "no")], &[], false);
        let mut doc = pod_doc(json!({"app": "web", "kubervisor/traffic": "no"}), None);
        apply(&mut doc, adopt_ops(&pod, "web")).unwrap();
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
        let released = SlimPod {
            labels: BTreeMap::from([(TRAFFIC_LABEL.to_string(), "yes".to_string())]),
            annotations: BTreeMap::new(),
            ..pod
        };
        assert!(is_released(&released));
    }

    #[test]
    fn label_keys_are_escaped_as_json_pointers() {
        assert_eq!(
            label_path("kubervisor/traffic"),
            "/metadata/labels/kubervisor~1traffic"
        );
        assert_eq!(pointer("a~b/c"), "a~0b~1c");
    }
}
