//! The in-memory index the watches fill: slim pods, Services and KubervisorServices.
//!
//! Decisions read snapshots from here; nothing on the hot path calls GET on the API.
//! Pods are kept slim (labels, Kubervisor annotations, phase, readiness) so that a large
//! fleet costs little memory, and indexed by label so that a Service selector resolves
//! without scanning every pod.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use kubervisor_api::pod::{
    BREAK_AT_ANNOTATION, MarksIn, PodMarks, RETRY_COUNT_ANNOTATION, STRATEGY_LABEL,
    TRAFFIC_CONDITION, TRAFFIC_LABEL,
};
use kubervisor_api::{KubervisorService, TrafficControl};
use kubervisor_core::PodView;
use tokio::sync::watch;

use crate::interest::Interests;
use crate::labels::Labels;

/// `kubectl apply`'s record of the last applied object.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What decisions need of a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct SlimPod {
    /// Shared with every pod of the namespace.
    pub namespace: Arc<str>,
    /// Shared with the index's keys.
    pub name: Arc<str>,
    pub uid: String,
    pub resource_version: String,
    pub labels: Labels,
    /// Only the annotations of the pod contract.
    pub annotations: Labels,
    /// Whether the pod has any annotation at all (a JSON Patch must create the map if not).
    pub has_annotations: bool,
    pub running: bool,
    pub ready: bool,
    pub terminating: bool,
    /// The `ContainersReady` condition is `True` (what readiness-gate mode counts as ready).
    pub containers_ready: bool,
    /// The pod declares the readiness gate `kubervisor.k8s.io/traffic`.
    pub traffic_gate: bool,
    /// The pod condition `kubervisor.k8s.io/traffic`: `Some(true)` for `True`, `None` if absent.
    pub traffic_condition: Option<bool>,
}

impl SlimPod {
    /// Keeps what decisions need of a full pod.
    pub fn from_pod(pod: &Pod) -> SlimPod {
        let status = pod.status.as_ref();
        let condition = |type_: &str| {
            status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|conditions| conditions.iter().find(|c| c.type_ == type_))
                .map(|c| c.status == "True")
        };
        let annotations = pod
            .annotations()
            .iter()
            .filter(|(k, _)| {
                [
                    BREAK_AT_ANNOTATION,
                    RETRY_COUNT_ANNOTATION,
                    TRAFFIC_LABEL,
                    STRATEGY_LABEL,
                ]
                .contains(&k.as_str())
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let traffic_gate = pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .is_some_and(|gates| gates.iter().any(|g| g.condition_type == TRAFFIC_CONDITION));
        SlimPod {
            namespace: crate::labels::share(pod.metadata.namespace.as_deref().unwrap_or_default()),
            name: Arc::from(pod.name_any()),
            uid: pod.uid().unwrap_or_default(),
            resource_version: pod.resource_version().unwrap_or_default(),
            labels: Labels::from_map(pod.labels()),
            annotations,
            has_annotations: !pod.annotations().is_empty(),
            running: status.and_then(|s| s.phase.as_deref()) == Some("Running"),
            ready: condition("Ready") == Some(true),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            containers_ready: condition("ContainersReady") == Some(true),
            traffic_gate,
            traffic_condition: condition(TRAFFIC_CONDITION),
        }
    }

    /// The decision engine's view of this pod, in label mode.
    pub fn view(&self) -> PodView {
        self.view_in(TrafficControl::Label)
    }

    /// The decision engine's view of this pod. In readiness-gate mode the traffic state is
    /// read from annotations, and a pod counts as ready when its containers are: its
    /// `Ready` condition also reflects Kubervisor's own gate.
    pub fn view_in(&self, control: TrafficControl) -> PodView {
        let (ready, marks_in) = match control {
            TrafficControl::Label => (self.ready, MarksIn::Labels),
            TrafficControl::ReadinessGate => (self.containers_ready, MarksIn::Annotations),
        };
        PodView {
            name: self.name.to_string(),
            running: self.running,
            ready,
            terminating: self.terminating,
            marks: PodMarks::read_in(marks_in, Some(&self.labels), Some(&self.annotations)),
        }
    }
}

/// What Kubervisor needs of a Service.
#[derive(Clone, Debug, PartialEq)]
pub struct SlimService {
    pub namespace: String,
    pub name: String,
    /// `None` for a Service without selector (its endpoints are managed by hand). Its
    /// strings are shared with the pods' labels.
    pub selector: Option<Labels>,
}

impl SlimService {
    /// Keeps what Kubervisor needs of a full Service.
    pub fn from_service(service: &Service) -> SlimService {
        SlimService {
            namespace: service.namespace().unwrap_or_default(),
            name: service.name_any(),
            selector: service
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .filter(|s| !s.is_empty())
                .map(Labels::from_map),
        }
    }

    /// The selector of the pods a KubervisorService on this Service manages: the
    /// Service's selector without the traffic requirement Kubervisor itself toggles.
    /// `None` when that leaves nothing (no selector, or one on the traffic label only).
    pub fn managed_selector(&self) -> Option<Labels> {
        let selector = self.selector.as_ref()?.without(TRAFFIC_LABEL);
        (!selector.is_empty()).then_some(selector)
    }
}

/// Pod names, each shared with the index's map of pods.
type PodNames = BTreeSet<Arc<str>>;

#[derive(Default)]
struct NamespacePods {
    pods: BTreeMap<Arc<str>, Arc<SlimPod>>,
    /// label key → label value → names of the pods with that label (each name shared
    /// with `pods`, keys and values with the pods' labels).
    by_label: HashMap<Arc<str>, HashMap<Arc<str>, PodNames>>,
}

impl NamespacePods {
    /// Inserts `pod`, returning the pod it replaces.
    fn insert(&mut self, pod: Arc<SlimPod>) -> Option<Arc<SlimPod>> {
        // The old pod's name goes with it: the keys share the new pod's.
        let name = pod.name.clone();
        let old = self.remove(&pod.name);
        for (k, v) in pod.labels.pairs() {
            self.by_label
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .insert(name.clone());
        }
        self.pods.insert(name, pod);
        old
    }

    fn remove(&mut self, name: &str) -> Option<Arc<SlimPod>> {
        let old = self.pods.remove(name)?;
        for (k, v) in old.labels.iter() {
            let Some(values) = self.by_label.get_mut(k) else {
                continue;
            };
            if let Some(names) = values.get_mut(v) {
                names.remove(name);
                if names.is_empty() {
                    values.remove(v);
                }
            }
            if values.is_empty() {
                self.by_label.remove(k);
            }
        }
        Some(old)
    }

    fn matching(&self, selector: &Labels) -> Vec<Arc<SlimPod>> {
        let mut sets: Vec<&PodNames> = Vec::with_capacity(selector.len());
        for (k, v) in selector.iter() {
            match self.by_label.get(k).and_then(|values| values.get(v)) {
                Some(names) => sets.push(names),
                None => return Vec::new(),
            }
        }
        sets.sort_by_key(|s| s.len());
        let Some((smallest, rest)) = sets.split_first() else {
            return Vec::new();
        };
        smallest
            .iter()
            .filter(|name| rest.iter().all(|s| s.contains(*name)))
            .filter_map(|name| self.pods.get(name).cloned())
            .collect()
    }
}

#[derive(Default)]
struct State {
    /// By namespace, keyed by the string the pods share.
    pods: HashMap<Arc<str>, NamespacePods>,
    pods_synced: bool,
    services: HashMap<(String, String), Arc<SlimService>>,
    services_synced: bool,
    kvs: BTreeMap<(String, String), KvsEntry>,
    kvs_synced: bool,
}

/// A KubervisorService as watched: the object, or its metadata and why its spec or
/// status could not be read (reported on its status as an invalid spec).
#[derive(Clone, Debug)]
pub struct KvsEntry {
    pub object: Arc<KubervisorService>,
    pub decode_error: Option<String>,
}

impl KvsEntry {
    /// Reads a watched object leniently: one unreadable resource must not stop the others.
    pub fn decode(object: kube::api::DynamicObject) -> KvsEntry {
        let mut metadata = object.metadata.clone();
        // Kept for as long as the resource exists, and read by nobody here: the field
        // managers' trees and `kubectl apply`'s copy of the whole object.
        metadata.managed_fields = None;
        if let Some(annotations) = &mut metadata.annotations {
            annotations.remove(LAST_APPLIED_ANNOTATION);
        }
        let value = serde_json::json!({
            "apiVersion": kubervisor_api::API_VERSION,
            "kind": kubervisor_api::KIND,
            "metadata": {},
            "spec": object.data.get("spec").cloned().unwrap_or(serde_json::json!({})),
            "status": object.data.get("status").cloned().unwrap_or(serde_json::Value::Null),
        });
        match serde_path_to_error::deserialize::<_, KubervisorService>(value) {
            Ok(mut kvs) => {
                kvs.metadata = metadata;
                KvsEntry {
                    object: Arc::new(kvs),
                    decode_error: None,
                }
            }
            Err(e) => {
                let mut kvs = KubervisorService::new(
                    &object.metadata.name.clone().unwrap_or_default(),
                    Default::default(),
                );
                kvs.metadata = metadata;
                KvsEntry {
                    object: Arc::new(kvs),
                    decode_error: Some(format!("{}: {}", e.path(), e.inner())),
                }
            }
        }
    }
}

/// The index shared by every loop of the operator.
pub struct Index {
    state: RwLock<State>,
    /// What each per-resource task reads, so that a change wakes only its readers.
    interests: Arc<Mutex<Interests>>,
    /// Bumped on every KubervisorService change.
    kvs_changes: watch::Sender<u64>,
    synced: watch::Sender<bool>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            state: RwLock::default(),
            interests: Arc::default(),
            kvs_changes: watch::Sender::new(0),
            synced: watch::Sender::new(false),
        }
    }
}

impl Index {
    pub fn new() -> Arc<Index> {
        Arc::new(Index::default())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn interests(&self) -> std::sync::MutexGuard<'_, Interests> {
        lock_interests(&self.interests)
    }

    /// The subscription of the task of KubervisorService `namespace/kvs`: it changes when
    /// that resource changes, and once [`Subscription::follow`] has named them, when its
    /// Service or a pod it selects or has labelled changes.
    pub fn subscribe(&self, namespace: &str, kvs: &str) -> Subscription {
        let (id, changes) = self.interests().register(namespace, kvs);
        Subscription {
            interests: self.interests.clone(),
            namespace: namespace.to_string(),
            id,
            changes,
        }
    }

    /// A receiver that changes whenever any KubervisorService changes.
    pub fn subscribe_kvs(&self) -> watch::Receiver<u64> {
        self.kvs_changes.subscribe()
    }

    /// A receiver that turns true once every watch has listed its objects.
    pub fn subscribe_synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    fn update_synced(&self, state: &State) {
        let synced = state.pods_synced && state.services_synced && state.kvs_synced;
        self.synced
            .send_if_modified(|s| std::mem::replace(s, synced) != synced);
    }

    // --- pods

    pub fn apply_pod(&self, pod: SlimPod) {
        let slim = Arc::new(pod);
        let old = self
            .write()
            .pods
            .entry(slim.namespace.clone())
            .or_default()
            .insert(slim.clone());
        self.interests().pod_changed(
            &slim.namespace,
            old.as_ref().map(|p| &p.labels),
            Some(&slim.labels),
        );
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let old = self
            .write()
            .pods
            .get_mut(namespace)
            .and_then(|ns| ns.remove(name));
        if let Some(old) = old {
            self.interests()
                .pod_changed(namespace, Some(&old.labels), None);
        }
    }

    /// Replaces every pod with a fresh listing, already made slim.
    pub fn reset_pods(&self, pods: Vec<SlimPod>) {
        let mut fresh: HashMap<Arc<str>, NamespacePods> = HashMap::new();
        for pod in pods {
            let slim = Arc::new(pod);
            fresh
                .entry(slim.namespace.clone())
                .or_default()
                .insert(slim);
        }
        let touched: BTreeSet<Arc<str>> = {
            let mut state = self.write();
            let old = std::mem::replace(&mut state.pods, fresh);
            state.pods_synced = true;
            self.update_synced(&state);
            old.keys().chain(state.pods.keys()).cloned().collect()
        };
        let interests = self.interests();
        touched
            .iter()
            .for_each(|ns| interests.namespace_changed(ns));
    }

    /// Pods of `namespace` whose labels include every pair of `selector`.
    pub fn pods_matching(&self, namespace: &str, selector: &Labels) -> Vec<Arc<SlimPod>> {
        self.read()
            .pods
            .get(namespace)
            .map(|ns| ns.matching(selector))
            .unwrap_or_default()
    }

    /// Whether the pod is in the index.
    pub fn has_pod(&self, namespace: &str, name: &str) -> bool {
        self.read()
            .pods
            .get(namespace)
            .is_some_and(|ns| ns.pods.contains_key(name))
    }

    /// Every pod with any value of label `key`, across namespaces.
    pub fn pods_with_label(&self, key: &str) -> Vec<Arc<SlimPod>> {
        let state = self.read();
        state
            .pods
            .values()
            .flat_map(|ns| {
                ns.pods
                    .values()
                    .filter(|p| p.labels.contains_key(key))
                    .cloned()
            })
            .collect()
    }

    // --- services

    pub fn apply_service(&self, service: SlimService) {
        let slim = Arc::new(service);
        let namespace = slim.namespace.clone();
        let key = (namespace.clone(), slim.name.clone());
        let changed = {
            let mut state = self.write();
            state.services.insert(key, slim.clone()).as_deref() != Some(&*slim)
        };
        if changed {
            self.interests().service_changed(&namespace, &slim.name);
        }
    }

    pub fn delete_service(&self, namespace: &str, name: &str) {
        self.write()
            .services
            .remove(&(namespace.to_string(), name.to_string()));
        self.interests().service_changed(namespace, name);
    }

    /// Replaces every Service with a fresh listing, already made slim.
    pub fn reset_services(&self, services: Vec<SlimService>) {
        let fresh: HashMap<(String, String), Arc<SlimService>> = services
            .into_iter()
            .map(|slim| ((slim.namespace.clone(), slim.name.clone()), Arc::new(slim)))
            .collect();
        let touched: BTreeSet<String> = {
            let mut state = self.write();
            let old = std::mem::replace(&mut state.services, fresh);
            state.services_synced = true;
            self.update_synced(&state);
            old.keys()
                .chain(state.services.keys())
                .map(|(ns, _)| ns.clone())
                .collect()
        };
        let interests = self.interests();
        touched
            .iter()
            .for_each(|ns| interests.namespace_changed(ns));
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<Arc<SlimService>> {
        self.read()
            .services
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    // --- kubervisorservices

    pub fn apply_kvs(&self, entry: KvsEntry) {
        let namespace = entry.object.namespace().unwrap_or_default();
        let name = entry.object.name_any();
        let existed = self
            .write()
            .kvs
            .insert((namespace.clone(), name.clone()), entry)
            .is_some();
        self.kvs_changes.send_modify(|n| *n += 1);
        if existed {
            self.interests().kvs_changed(&namespace, &name);
        } else {
            // A new resource may claim pods another one's task counted as its own.
            self.interests().namespace_changed(&namespace);
        }
    }

    pub fn delete_kvs(&self, namespace: &str, name: &str) {
        self.write()
            .kvs
            .remove(&(namespace.to_string(), name.to_string()));
        self.kvs_changes.send_modify(|n| *n += 1);
        // The pods it claimed may now be another resource's.
        self.interests().namespace_changed(namespace);
    }

    pub fn reset_kvs(&self, items: Vec<KvsEntry>) {
        let fresh: BTreeMap<(String, String), KvsEntry> = items
            .into_iter()
            .map(|e| {
                (
                    (
                        e.object.namespace().unwrap_or_default(),
                        e.object.name_any(),
                    ),
                    e,
                )
            })
            .collect();
        {
            let mut state = self.write();
            state.kvs = fresh;
            state.kvs_synced = true;
            self.update_synced(&state);
        }
        self.kvs_changes.send_modify(|n| *n += 1);
        self.interests().everything_changed();
    }

    pub fn kvs(&self, namespace: &str, name: &str) -> Option<KvsEntry> {
        self.read()
            .kvs
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every KubervisorService, in (namespace, name) order.
    pub fn all_kvs(&self) -> Vec<KvsEntry> {
        self.read().kvs.values().cloned().collect()
    }
}

fn lock_interests(interests: &Mutex<Interests>) -> std::sync::MutexGuard<'_, Interests> {
    interests.lock().unwrap_or_else(|e| e.into_inner())
}

/// A task's registration with the index: `changes` changes when something the task reads
/// changes. Dropping it unregisters.
pub struct Subscription {
    interests: Arc<Mutex<Interests>>,
    namespace: String,
    id: u64,
    pub changes: watch::Receiver<u64>,
}

impl Subscription {
    /// Names what the task's observation reads besides its own resource: the Service it
    /// names and that Service's selector. Call it before reading the pods, so that a pod
    /// changed after the read wakes the task.
    pub fn follow(&self, service: Option<&str>, selector: Option<&Labels>) {
        lock_interests(&self.interests).follow(&self.namespace, self.id, service, selector);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock_interests(&self.interests).unregister(&self.namespace, self.id);
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use kube::api::ObjectMeta;

    use kubervisor_api::pod::NAME_LABEL;

    use super::*;

    fn slim(ns: &str, name: &str, labels: &[(&str, &str)], ready: bool) -> SlimPod {
        SlimPod::from_pod(&pod(ns, name, labels, ready))
    }

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)], ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                resource_version: Some("1".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                annotations: Some(BTreeMap::from([
                    ("breaker/retryCount".to_string(), "2".to_string()),
                    ("unrelated/large".to_string(), "x".repeat(1000)),
                ])),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn sel(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().copied().collect()
    }

    #[test]
    fn the_index_keeps_one_copy_of_each_pod_name() {
        let index = Index::default();
        index.apply_pod(slim("ns", "a", &[("app", "web")], true));
        // A new version of the pod: the keys follow it, the old name goes.
        index.apply_pod(slim("ns", "a", &[("app", "web")], false));
        let state = index.read();
        let ns = &state.pods["ns"];
        let (key, pod) = ns.pods.get_key_value("a").unwrap();
        assert!(!pod.ready, "the new version is kept");
        assert!(Arc::ptr_eq(key, &pod.name));
        let listed = ns.by_label["app"]["web"].iter().next().unwrap();
        assert!(Arc::ptr_eq(listed, &pod.name));
    }

    #[test]
    fn a_services_managed_selector_leaves_out_the_traffic_label() {
        let service = |selector: &[(&str, &str)]| SlimService {
            namespace: "ns".into(),
            name: "web".into(),
            selector: Some(sel(selector)),
        };
        assert_eq!(
            service(&[("app", "web"), (TRAFFIC_LABEL, "yes")]).managed_selector(),
            Some(sel(&[("app", "web")]))
        );
        assert_eq!(service(&[(TRAFFIC_LABEL, "yes")]).managed_selector(), None);
        let manual = SlimService {
            selector: None,
            ..service(&[])
        };
        assert_eq!(manual.managed_selector(), None);
    }

    fn names(pods: &[Arc<SlimPod>]) -> Vec<&str> {
        pods.iter().map(|p| &*p.name).collect()
    }

    #[test]
    fn slim_pod_keeps_only_what_decisions_need() {
        let slim = SlimPod::from_pod(&pod("ns", "a", &[("app", "web")], true));
        assert!(slim.running && slim.ready && !slim.terminating);
        assert_eq!(slim.annotations, sel(&[("breaker/retryCount", "2")]));
        assert_eq!(slim.view().marks.retries(), Some(2));
    }

    #[test]
    fn a_kubervisorservice_is_kept_without_managed_fields_or_the_last_applied_copy() {
        let object: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": kubervisor_api::API_VERSION,
            "kind": kubervisor_api::KIND,
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "resourceVersion": "7",
                "annotations": {
                    LAST_APPLIED_ANNOTATION: "{\"a\":\"copy of the whole object\"}",
                    "team": "checkout",
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}],
            },
            "spec": {"breakers": []},
        }))
        .unwrap();
        let entry = KvsEntry::decode(object);
        assert_eq!(entry.decode_error, None);
        let metadata = &entry.object.metadata;
        assert_eq!(metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(metadata.managed_fields, None);
        assert_eq!(
            metadata.annotations,
            Some(BTreeMap::from([(
                "team".to_string(),
                "checkout".to_string()
            )]))
        );
    }

    #[test]
    fn selector_matches_by_label_index_within_the_namespace() {
        let index = Index::default();
        index.apply_pod(slim("ns", "a", &[("app", "web"), ("tier", "front")], true));
        index.apply_pod(slim("ns", "b", &[("app", "web")], true));
        index.apply_pod(slim("ns", "c", &[("app", "api")], true));
        index.apply_pod(slim("other", "d", &[("app", "web")], true));
        assert_eq!(
            names(&index.pods_matching("ns", &sel(&[("app", "web")]))),
            ["a", "b"]
        );
        assert_eq!(
            names(&index.pods_matching("ns", &sel(&[("app", "web"), ("tier", "front")]))),
            ["a"]
        );
        assert!(index.pods_matching("ns", &sel(&[("app", "db")])).is_empty());
        assert!(index.pods_matching("ns", &sel(&[])).is_empty());
    }

    #[test]
    fn relabelled_pod_moves_between_selectors_and_deleted_pod_disappears() {
        let index = Index::default();
        index.apply_pod(slim("ns", "a", &[("app", "web")], true));
        index.apply_pod(slim("ns", "a", &[("app", "api")], true));
        assert!(
            index
                .pods_matching("ns", &sel(&[("app", "web")]))
                .is_empty()
        );
        assert_eq!(
            names(&index.pods_matching("ns", &sel(&[("app", "api")]))),
            ["a"]
        );
        index.delete_pod("ns", "a");
        assert!(
            index
                .pods_matching("ns", &sel(&[("app", "api")]))
                .is_empty()
        );
    }

    #[test]
    fn relisting_replaces_everything_and_marks_synced_once_all_kinds_listed() {
        let index = Index::default();
        index.apply_pod(slim("ns", "stale", &[("app", "web")], true));
        index.reset_pods(vec![slim("ns", "fresh", &[("app", "web")], true)]);
        assert_eq!(
            names(&index.pods_matching("ns", &sel(&[("app", "web")]))),
            ["fresh"]
        );
        assert!(!*index.subscribe_synced().borrow());
        index.reset_services(Vec::new());
        assert!(!*index.subscribe_synced().borrow());
        index.reset_kvs(Vec::new());
        assert!(*index.subscribe_synced().borrow());
    }

    fn kvs_entry(ns: &str, name: &str) -> KvsEntry {
        let mut kvs = KubervisorService::new(name, Default::default());
        kvs.metadata.namespace = Some(ns.into());
        KvsEntry {
            object: Arc::new(kvs),
            decode_error: None,
        }
    }

    /// Which subscriptions changed since the last call, each then marked unchanged.
    fn woken(subs: &mut [&mut Subscription]) -> Vec<bool> {
        subs.iter_mut()
            .map(|s| {
                let changed = s.changes.has_changed().unwrap();
                s.changes.mark_unchanged();
                changed
            })
            .collect()
    }

    #[test]
    fn a_change_wakes_only_the_tasks_that_read_it() {
        let index = Index::default();
        let (mut web, mut api) = (index.subscribe("ns", "web"), index.subscribe("ns", "api"));
        let mut elsewhere = index.subscribe("other", "web");
        web.follow(Some("web"), Some(&sel(&[("app", "web")])));
        api.follow(Some("api"), Some(&sel(&[("app", "api"), ("tier", "back")])));
        elsewhere.follow(Some("web"), Some(&sel(&[("app", "web")])));
        let mut all = [&mut web, &mut api, &mut elsewhere];

        index.apply_pod(slim("ns", "p", &[("app", "web")], true));
        assert_eq!(woken(&mut all), [true, false, false], "selected by web");
        index.apply_pod(slim("ns", "p", &[("app", "api")], true));
        assert_eq!(
            woken(&mut all),
            [true, false, false],
            "left web, not in api's selector"
        );
        index.apply_pod(slim("ns", "p", &[("app", "api"), ("tier", "back")], true));
        assert_eq!(
            woken(&mut all),
            [false, true, false],
            "entered api's selector"
        );
        index.apply_pod(slim("ns", "q", &[(NAME_LABEL, "web")], true));
        assert_eq!(woken(&mut all), [true, false, false], "labelled for web");
        index.delete_pod("ns", "p");
        assert_eq!(
            woken(&mut all),
            [false, true, false],
            "gone from api's selection"
        );
        index.delete_pod("ns", "never-there");
        assert_eq!(woken(&mut all), [false, false, false]);

        let service = |name: &str| SlimService {
            namespace: "ns".into(),
            name: name.into(),
            selector: Some(sel(&[("app", name)])),
        };
        index.apply_service(service("api"));
        assert_eq!(woken(&mut all), [false, true, false], "api's Service");
        index.apply_service(service("api"));
        assert_eq!(
            woken(&mut all),
            [false, false, false],
            "the same Service again"
        );

        index.apply_kvs(kvs_entry("ns", "web"));
        assert_eq!(
            woken(&mut all),
            [true, true, false],
            "a new resource may claim pods"
        );
        index.apply_kvs(kvs_entry("ns", "web"));
        assert_eq!(
            woken(&mut all),
            [true, false, false],
            "an update is its own task's"
        );
        index.delete_kvs("ns", "web");
        assert_eq!(
            woken(&mut all),
            [true, true, false],
            "its pods may be another's now"
        );
        index.reset_pods(Vec::new());
        assert_eq!(
            woken(&mut all),
            [true, true, false],
            "a relist of the namespace"
        );
    }

    #[test]
    fn a_task_follows_its_services_new_selector_and_unregisters_when_dropped() {
        let index = Index::default();
        let web = index.subscribe("ns", "web");
        web.follow(Some("web"), Some(&sel(&[("app", "web")])));
        web.follow(Some("web"), Some(&sel(&[("app", "web-v2")])));
        index.apply_pod(slim("ns", "old", &[("app", "web")], true));
        assert!(
            !web.changes.has_changed().unwrap(),
            "the old selector is forgotten"
        );
        index.apply_pod(slim("ns", "new", &[("app", "web-v2")], true));
        assert!(
            web.changes.has_changed().unwrap(),
            "the new selector is followed"
        );
        drop(web);
        assert!(index.interests().is_empty(), "nothing left registered");
        index.apply_pod(slim("ns", "new", &[("app", "web-v2"), ("x", "y")], true));
    }
}
