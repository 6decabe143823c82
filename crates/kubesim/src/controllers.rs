//! Built-in controllers: pod lifecycle, deployments, endpoints, garbage collection.

use crate::patch::PatchKind;
use crate::resources::{ResKey, ResourceInfo};
use crate::selector::LabelSelector;
use crate::store::{DeleteOptions, Event, EventType, Store, Sub};
use crate::util::{self, labels_of, name_of, namespace_of, str_at};
use serde_json::{Value, json};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

/// Annotation that keeps a running pod unready (`"false"`), to simulate a failing probe.
pub const READY_ANNOTATION: &str = "sim.kubervisor.io/ready";
const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

fn pods_key() -> ResKey {
    ResKey::new("", "pods")
}

fn info(store: &Store, group: &str, plural: &str) -> Arc<ResourceInfo> {
    store
        .resource_by_key(&ResKey::new(group, plural))
        .expect("built-in resources are always registered")
}

/// Drains what is already queued so a burst of changes is handled as one batch.
fn drain(first: Arc<Event>, rx: &mut UnboundedReceiver<Arc<Event>>) -> Vec<Arc<Event>> {
    let mut batch = vec![first];
    while batch.len() < 10_000 {
        match rx.try_recv() {
            Ok(e) => batch.push(e),
            Err(_) => break,
        }
    }
    batch
}

pub fn is_pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn owner_uid_of_kind<'a>(obj: &'a Value, kind: &str) -> Option<(&'a str, &'a str)> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r["kind"] == kind && r["controller"] == true)
        .and_then(|r| Some((r.get("name")?.as_str()?, r.get("uid")?.as_str()?)))
}

/// When, what, namespace, name, uid.
type Timer = (Instant, KubeletAction, String, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum KubeletAction {
    Ready,
    Finalize,
}

/// The simulated kubelet: starts pods, makes them Ready after a delay, finishes graceful deletions.
pub async fn kubelet(
    store: Arc<Store>,
    ready_delay: Duration,
    mut rx: UnboundedReceiver<Arc<Event>>,
) {
    let pods = info(&store, "", "pods");
    let mut timers: BinaryHeap<Reverse<Timer>> = BinaryHeap::new();
    // Pods whose start-up delay has passed, so their readiness follows the annotation.
    let mut started: HashSet<String> = HashSet::new();
    let mut finalizing: HashSet<String> = HashSet::new();
    loop {
        let next = timers.peek().map(|Reverse(t)| t.0);
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                for ev in drain(ev, &mut rx) {
                    if ev.key != pods_key() {
                        continue;
                    }
                    let pod = &ev.object;
                    let uid = str_at(pod, "/metadata/uid").unwrap_or_default().to_string();
                    if ev.kind == EventType::Deleted {
                        started.remove(&uid);
                        finalizing.remove(&uid);
                        continue;
                    }
                    if pod.pointer("/metadata/deletionTimestamp").is_some() {
                        if finalizing.insert(uid.clone()) {
                            let grace = pod.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0).max(0);
                            let wait = ready_delay.min(Duration::from_secs(grace as u64));
                            timers.push(Reverse((Instant::now() + wait, KubeletAction::Finalize, ev.namespace.clone(), ev.name.clone(), uid)));
                        }
                        continue;
                    }
                    if str_at(pod, "/status/phase") == Some("Pending") && pod.pointer("/status/podIP").is_none() {
                        let ip = store.allocate_pod_ip();
                        let patch = json!({"status": running_status(pod, &ip, false)});
                        if store.patch(&pods, &ev.namespace, &ev.name, PatchKind::Merge, &patch, Sub::Status).is_ok() {
                            timers.push(Reverse((Instant::now() + ready_delay, KubeletAction::Ready, ev.namespace.clone(), ev.name.clone(), uid)));
                        }
                        continue;
                    }
                    if started.contains(&uid) {
                        sync_readiness(&store, &pods, pod);
                    }
                }
            }
            _ = async { match next { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                let now = Instant::now();
                while let Some(Reverse(t)) = timers.peek() {
                    if t.0 > now {
                        break;
                    }
                    let Some(Reverse((_, action, ns, name, uid))) = timers.pop() else { break };
                    let Some(pod) = store.get(&pods_key(), &ns, &name) else { continue };
                    if str_at(&pod, "/metadata/uid") != Some(uid.as_str()) {
                        continue;
                    }
                    match action {
                        KubeletAction::Ready => {
                            started.insert(uid);
                            sync_readiness(&store, &pods, &pod);
                        }
                        KubeletAction::Finalize => {
                            let opts = DeleteOptions { grace_period_seconds: Some(0), precondition_uid: Some(uid), ..Default::default() };
                            let _ = store.delete(&pods, &ns, &name, &opts);
                        }
                    }
                }
            }
        }
    }
}

fn sync_readiness(store: &Store, pods: &ResourceInfo, pod: &Value) {
    if pod.pointer("/metadata/deletionTimestamp").is_some()
        || str_at(pod, "/status/phase") != Some("Running")
    {
        return;
    }
    let containers_ready = str_at(
        pod,
        &format!(
            "/metadata/annotations/{}",
            READY_ANNOTATION.replace('/', "~1")
        ),
    ) != Some("false");
    // As the kubelet does: Ready needs the containers and every readiness gate `True`.
    let want = containers_ready && readiness_gates_pass(pod);
    if is_pod_ready(pod) == want && condition_is(pod, "ContainersReady") == containers_ready {
        return;
    }
    let ip = str_at(pod, "/status/podIP").unwrap_or_default();
    let mut status = running_status(pod, ip, containers_ready);
    if let Some(start) = pod.pointer("/status/startTime") {
        status["startTime"] = start.clone();
    }
    // On the version read: the conditions list is written whole, and a readiness gate's
    // condition set meanwhile by someone else must not be overwritten with the old list
    // (a real kubelet patches only its own conditions). On a conflict, the change that
    // caused it comes through the watch and readiness is synced again from it.
    let rv = str_at(pod, "/metadata/resourceVersion").unwrap_or_default();
    let _ = store.patch(
        pods,
        namespace_of(pod),
        name_of(pod),
        PatchKind::Merge,
        &json!({"metadata": {"resourceVersion": rv}, "status": status}),
        Sub::Status,
    );
}

/// Whether the pod has a condition of this type that is `True`.
fn condition_is(pod: &Value, type_: &str) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == type_ && c["status"] == "True")
        })
}

/// Whether every readiness gate of the pod has its condition `True` (an absent condition
/// fails its gate, as on a real node).
fn readiness_gates_pass(pod: &Value) -> bool {
    pod.pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .is_none_or(|gates| {
            gates.iter().all(|g| {
                g["conditionType"]
                    .as_str()
                    .is_some_and(|t| condition_is(pod, t))
            })
        })
}

/// The status of a running pod whose containers are (or are not) ready. The conditions of
/// its readiness gates, written by others through pods/status, are kept.
fn running_status(pod: &Value, ip: &str, containers_ready: bool) -> Value {
    let now = util::now_rfc3339();
    let ready = containers_ready && readiness_gates_pass(pod);
    let flag = if ready { "True" } else { "False" };
    let containers_flag = if containers_ready { "True" } else { "False" };
    let containers: Vec<Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    json!({
                        "name": c.get("name").cloned().unwrap_or(json!("app")),
                        "image": c.get("image").cloned().unwrap_or(json!("")),
                        "imageID": "",
                        "containerID": format!("kubesim://{}", str_at(pod, "/metadata/uid").unwrap_or_default()),
                        "ready": containers_ready,
                        "started": true,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let gates: Vec<&str> = pod
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .map(|gates| {
            gates
                .iter()
                .filter_map(|g| g["conditionType"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let mut conditions = vec![
        json!({"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}),
        json!({"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}),
        json!({"type": "Ready", "status": flag, "lastProbeTime": null, "lastTransitionTime": now}),
        json!({"type": "ContainersReady", "status": containers_flag, "lastProbeTime": null, "lastTransitionTime": now}),
        json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}),
    ];
    if let Some(existing) = pod.pointer("/status/conditions").and_then(Value::as_array) {
        conditions.extend(
            existing
                .iter()
                .filter(|c| c["type"].as_str().is_some_and(|t| gates.contains(&t)))
                .cloned(),
        );
    }
    json!({
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "startTime": now,
        "qosClass": "BestEffort",
        "conditions": conditions,
        "containerStatuses": containers,
    })
}

/// Keeps `spec.replicas` pods of each Deployment (no ReplicaSets), and its status.
pub async fn deployments(store: Arc<Store>, mut rx: UnboundedReceiver<Arc<Event>>) {
    let deploy_key = ResKey::new("apps", "deployments");
    while let Some(ev) = rx.recv().await {
        let mut todo: BTreeSet<(String, String)> = BTreeSet::new();
        for ev in drain(ev, &mut rx) {
            if ev.key == deploy_key && ev.kind != EventType::Deleted {
                todo.insert((ev.namespace.clone(), ev.name.clone()));
            } else if ev.key == pods_key() {
                for obj in std::iter::once(&ev.object).chain(ev.old.iter()) {
                    if let Some((owner, _)) = owner_uid_of_kind(obj, "Deployment") {
                        todo.insert((ev.namespace.clone(), owner.to_string()));
                    }
                }
            }
        }
        for (ns, name) in todo {
            reconcile_deployment(&store, &ns, &name);
        }
    }
}

fn template_hash(template: &Value) -> String {
    // FNV-1a over the canonical JSON: stable across runs, cheap, good enough to tell templates apart.
    let text = serde_json::to_string(template).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..10)
        .map(|i| ALPHABET[((h >> (i * 6)) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

fn reconcile_deployment(store: &Store, ns: &str, name: &str) {
    let deploys = info(store, "apps", "deployments");
    let pods = info(store, "", "pods");
    let Some(dep) = store.get(&deploys.key(), ns, name) else {
        return;
    };
    if dep.pointer("/metadata/deletionTimestamp").is_some() {
        return;
    }
    let uid = str_at(&dep, "/metadata/uid")
        .unwrap_or_default()
        .to_string();
    let selector =
        LabelSelector::from_object(dep.pointer("/spec/selector").unwrap_or(&Value::Null));
    let template = dep.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let hash = template_hash(&template);
    let desired = dep
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0) as usize;
    // The owner index finds this deployment's pods without scanning the namespace.
    let owned: Vec<Arc<Value>> = store
        .dependents(&uid)
        .into_iter()
        .filter(|(key, _, _)| *key == pods.key())
        .filter_map(|(key, pod_ns, pod_name)| store.get(&key, &pod_ns, &pod_name))
        .filter(|p| {
            owner_uid_of_kind(p, "Deployment").is_some_and(|(_, u)| u == uid)
                && selector.matches_object(p)
        })
        .collect();
    let alive: Vec<&Arc<Value>> = owned
        .iter()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .collect();
    let (mut current, old): (Vec<&Arc<Value>>, Vec<&Arc<Value>>) = alive.iter().partition(|p| {
        str_at(p, &format!("/metadata/labels/{TEMPLATE_HASH_LABEL}")) == Some(hash.as_str())
    });
    let current_ready = current.iter().filter(|p| is_pod_ready(p)).count();
    for _ in current.len()..desired {
        create_pod(store, &pods, &dep, &template, &hash);
    }
    if current.len() > desired {
        // Scale down the newest first, like a ReplicaSet prefers to keep older pods.
        current.sort_by(|a, b| {
            (str_at(b, "/metadata/creationTimestamp"), name_of(b))
                .cmp(&(str_at(a, "/metadata/creationTimestamp"), name_of(a)))
        });
        for p in current.iter().take(current.len() - desired) {
            let _ = store.delete(&pods, ns, name_of(p), &DeleteOptions::default());
        }
    }
    // Rolling update with full surge: old pods go once the new ones are all Ready.
    if current_ready >= desired {
        for p in &old {
            let _ = store.delete(&pods, ns, name_of(p), &DeleteOptions::default());
        }
    }
    let ready = alive.iter().filter(|p| is_pod_ready(p)).count();
    let available = if ready >= desired { "True" } else { "False" };
    let mut status = json!({
        "observedGeneration": dep.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "replicas": alive.len(),
        "updatedReplicas": current.len().min(desired).max(current_ready),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": desired.saturating_sub(ready),
    });
    let prev_conditions = dep.pointer("/status/conditions").cloned();
    let condition = |t: &str, s: &str, reason: &str| {
        let since = prev_conditions
            .as_ref()
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == t && c["status"] == s))
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(util::now_rfc3339()));
        json!({"type": t, "status": s, "reason": reason, "message": format!("kubesim: {reason}"), "lastTransitionTime": since.clone(), "lastUpdateTime": since})
    };
    status["conditions"] = json!([
        condition(
            "Available",
            available,
            if available == "True" {
                "MinimumReplicasAvailable"
            } else {
                "MinimumReplicasUnavailable"
            }
        ),
        condition(
            "Progressing",
            "True",
            if current_ready >= desired {
                "NewReplicaSetAvailable"
            } else {
                "ReplicaSetUpdated"
            }
        ),
    ]);
    if ready == 0
        && let Some(o) = status.as_object_mut()
    {
        o.remove("readyReplicas");
        o.remove("availableReplicas");
    }
    if dep.get("status") != Some(&status) {
        // Conditional on the version read: a conflict means a newer event will reconcile again.
        let mut updated = (*dep).clone();
        updated["status"] = status;
        let _ = store.update(&deploys, ns, name, updated, Sub::Status);
    }
}

fn create_pod(store: &Store, pods: &ResourceInfo, dep: &Value, template: &Value, hash: &str) {
    let ns = namespace_of(dep);
    let name = name_of(dep);
    let mut md = template.get("metadata").cloned().unwrap_or(json!({}));
    if !md.is_object() {
        md = json!({});
    }
    md["labels"][TEMPLATE_HASH_LABEL] = json!(hash);
    md["ownerReferences"] = json!([{
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name,
        "uid": str_at(dep, "/metadata/uid").unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    for _ in 0..5 {
        md["name"] = json!(format!("{name}-{}", util::name_suffix()));
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": md,
            "spec": template.get("spec").cloned().unwrap_or(json!({})),
        });
        match store.create(pods, ns, pod) {
            Err(e) if e.code == 409 => continue,
            Err(e) => {
                tracing::warn!(deployment = %name, namespace = %ns, error = %e, "cannot create pod from template");
                return;
            }
            Ok(_) => return,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct PodEntry {
    labels: BTreeMap<String, String>,
    uid: String,
    ip: Option<String>,
    ready: bool,
    terminating: bool,
    ports: Vec<(String, i64)>,
}

impl PodEntry {
    fn from(pod: &Value) -> Self {
        let ports = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c.get("ports")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|p| {
                Some((
                    p.get("name")?.as_str()?.to_string(),
                    p.get("containerPort")?.as_i64()?,
                ))
            })
            .collect();
        PodEntry {
            labels: labels_of(pod),
            uid: str_at(pod, "/metadata/uid").unwrap_or_default().to_string(),
            ip: str_at(pod, "/status/podIP")
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            ready: is_pod_ready(pod),
            terminating: pod.pointer("/metadata/deletionTimestamp").is_some(),
            ports,
        }
    }
}

#[derive(Debug, Default)]
struct ServiceEntry {
    selector: BTreeMap<String, String>,
    uid: String,
    ports: Vec<Value>,
    /// Pods whose labels match the selector, whatever their readiness.
    members: BTreeSet<String>,
    written: Option<(Value, Value)>,
}

/// Namespace state of the endpoints controller.
#[derive(Default)]
struct NsIndex {
    pods: HashMap<String, PodEntry>,
    services: HashMap<String, ServiceEntry>,
    /// Services by their first selector pair: only they can match a pod carrying that label.
    by_label: HashMap<(String, String), BTreeSet<String>>,
}

impl NsIndex {
    fn candidates(&self, labels: &BTreeMap<String, String>) -> Vec<String> {
        labels
            .iter()
            .filter_map(|(k, v)| self.by_label.get(&(k.clone(), v.clone())))
            .flatten()
            .cloned()
            .collect()
    }

    fn index_service(&mut self, name: &str, selector: &BTreeMap<String, String>, add: bool) {
        if let Some((k, v)) = selector.iter().next() {
            let set = self.by_label.entry((k.clone(), v.clone())).or_default();
            if add {
                set.insert(name.to_string());
            } else {
                set.remove(name);
                if set.is_empty() {
                    self.by_label.remove(&(k.clone(), v.clone()));
                }
            }
        }
    }
}

/// Keeps Endpoints and EndpointSlices of every selector Service equal to its matching pods.
pub async fn endpoints(store: Arc<Store>, mut rx: UnboundedReceiver<Arc<Event>>) {
    let svc_key = ResKey::new("", "services");
    let mut index: HashMap<String, NsIndex> = HashMap::new();
    while let Some(ev) = rx.recv().await {
        let mut dirty: BTreeSet<(String, String)> = BTreeSet::new();
        for ev in drain(ev, &mut rx) {
            if ev.key == pods_key() {
                let ns = index.entry(ev.namespace.clone()).or_default();
                let old = ns.pods.get(&ev.name).cloned();
                let new = (ev.kind != EventType::Deleted).then(|| PodEntry::from(&ev.object));
                if old == new {
                    continue;
                }
                let mut cands: BTreeSet<String> = BTreeSet::new();
                for e in old.iter().chain(new.iter()) {
                    cands.extend(ns.candidates(&e.labels));
                }
                for svc_name in cands {
                    let Some(svc) = ns.services.get_mut(&svc_name) else {
                        continue;
                    };
                    let matches = new
                        .as_ref()
                        .is_some_and(|p| selector_matches(&svc.selector, &p.labels));
                    let was = svc.members.contains(&ev.name);
                    if matches {
                        svc.members.insert(ev.name.clone());
                    } else {
                        svc.members.remove(&ev.name);
                    }
                    if matches || was {
                        dirty.insert((ev.namespace.clone(), svc_name));
                    }
                }
                match new {
                    Some(p) => ns.pods.insert(ev.name.clone(), p),
                    None => ns.pods.remove(&ev.name),
                };
            } else if ev.key == svc_key {
                let ns = index.entry(ev.namespace.clone()).or_default();
                if ev.kind == EventType::Deleted {
                    if let Some(old) = ns.services.remove(&ev.name) {
                        ns.index_service(&ev.name, &old.selector, false);
                    }
                    delete_endpoints(&store, &ev.namespace, &ev.name);
                    dirty.remove(&(ev.namespace.clone(), ev.name.clone()));
                    continue;
                }
                let selector = util::string_map(ev.object.pointer("/spec/selector"));
                let ports = ev
                    .object
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let uid = str_at(&ev.object, "/metadata/uid")
                    .unwrap_or_default()
                    .to_string();
                let entry = ns.services.entry(ev.name.clone()).or_default();
                if entry.selector == selector
                    && entry.ports == ports
                    && entry.uid == uid
                    && ev.kind != EventType::Added
                {
                    continue;
                }
                let old_selector = std::mem::replace(&mut entry.selector, selector.clone());
                entry.ports = ports;
                entry.uid = uid;
                entry.written = None;
                entry.members = if selector.is_empty() {
                    BTreeSet::new()
                } else {
                    ns.pods
                        .iter()
                        .filter(|(_, p)| selector_matches(&selector, &p.labels))
                        .map(|(n, _)| n.clone())
                        .collect()
                };
                ns.index_service(&ev.name, &old_selector, false);
                ns.index_service(&ev.name, &selector, true);
                if !selector.is_empty() {
                    dirty.insert((ev.namespace.clone(), ev.name.clone()));
                }
            }
        }
        for (ns_name, svc_name) in dirty {
            let Some(ns) = index.get_mut(&ns_name) else {
                continue;
            };
            let Some(svc) = ns.services.get(&svc_name) else {
                continue;
            };
            if svc.selector.is_empty() {
                continue;
            }
            let (ep, slice) = render_endpoints(&ns_name, &svc_name, svc, &ns.pods);
            if svc.written.as_ref() == Some(&(ep.clone(), slice.clone())) {
                continue;
            }
            let ok = write_endpoints(&store, &ns_name, ep.clone(), slice.clone());
            if let Some(svc) = ns.services.get_mut(&svc_name) {
                svc.written = ok.then_some((ep, slice));
            }
        }
    }
}

fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn slice_name(svc: &str) -> String {
    format!("{svc}-kubesim")
}

fn render_endpoints(
    ns: &str,
    svc_name: &str,
    svc: &ServiceEntry,
    pods: &HashMap<String, PodEntry>,
) -> (Value, Value) {
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    let mut slice_eps = Vec::new();
    let mut first_pod: Option<&PodEntry> = None;
    for name in &svc.members {
        let Some(p) = pods.get(name) else { continue };
        let Some(ip) = &p.ip else { continue };
        first_pod.get_or_insert(p);
        let target = json!({"kind": "Pod", "namespace": ns, "name": name, "uid": p.uid});
        let addr = json!({"ip": ip, "nodeName": "kubesim-node", "targetRef": target});
        let is_ready = p.ready && !p.terminating;
        if is_ready {
            ready.push(addr);
        } else if !p.terminating {
            not_ready.push(addr);
        }
        slice_eps.push(json!({
            "addresses": [ip],
            "conditions": {"ready": is_ready, "serving": p.ready, "terminating": p.terminating},
            "nodeName": "kubesim-node",
            "targetRef": target,
        }));
    }
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .filter_map(|sp| {
            let port = match sp.get("targetPort") {
                Some(Value::Number(n)) => n.as_i64()?,
                Some(Value::String(named)) => match named.parse::<i64>() {
                    Ok(n) => n,
                    Err(_) => first_pod?.ports.iter().find(|(n, _)| n == named)?.1,
                },
                _ => sp.get("port")?.as_i64()?,
            };
            let mut p = json!({"port": port, "protocol": sp.get("protocol").cloned().unwrap_or(json!("TCP"))});
            if let Some(n) = sp.get("name") {
                p["name"] = n.clone();
            }
            Some(p)
        })
        .collect();
    let mut ep = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": svc_name, "namespace": ns, "labels": {"endpoints.kubernetes.io/managed-by": "endpoint-controller"}},
    });
    if !ready.is_empty() || !not_ready.is_empty() {
        let mut subset = json!({"ports": ports});
        if !ready.is_empty() {
            subset["addresses"] = json!(ready);
        }
        if !not_ready.is_empty() {
            subset["notReadyAddresses"] = json!(not_ready);
        }
        ep["subsets"] = json!([subset]);
    }
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(svc_name),
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": svc_name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": svc_name, "uid": svc.uid, "controller": true, "blockOwnerDeletion": true}],
        },
        "addressType": "IPv4",
        "endpoints": slice_eps,
        "ports": ports,
    });
    (ep, slice)
}

fn write_endpoints(store: &Store, ns: &str, ep: Value, slice: Value) -> bool {
    let eps = info(store, "", "endpoints");
    let slices = info(store, "discovery.k8s.io", "endpointslices");
    let a = store.upsert(&eps, ns, ep);
    let b = store.upsert(&slices, ns, slice);
    if let Err(e) = a.as_ref().and(b.as_ref()) {
        tracing::warn!(namespace = %ns, error = %e, "cannot write endpoints");
    }
    a.is_ok() && b.is_ok()
}

fn delete_endpoints(store: &Store, ns: &str, svc: &str) {
    let eps = info(store, "", "endpoints");
    let slices = info(store, "discovery.k8s.io", "endpointslices");
    let _ = store.delete(&eps, ns, svc, &DeleteOptions::default());
    let _ = store.delete(&slices, ns, &slice_name(svc), &DeleteOptions::default());
}

fn namespaces_key() -> ResKey {
    ResKey::new("", "namespaces")
}

/// The namespace controller: empties a namespace being deleted, then removes it.
///
/// As upstream's: a namespace is looked at `delay` (5 s upstream) after each change of
/// it, so that every API server refuses new content in it first; its pods are deleted
/// first, and everything else only once they are gone (ordered namespace deletion,
/// Kubernetes 1.34); objects with finalizers stay until those are removed; the
/// `kubernetes` finalizer is removed and the namespace deleted once nothing is left. Its
/// status conditions say what remains.
pub async fn namespaces(store: Arc<Store>, delay: Duration, mut rx: UnboundedReceiver<Arc<Event>>) {
    // When each terminating namespace is looked at next.
    let mut due: BTreeMap<String, Instant> = BTreeMap::new();
    // Namespaces whose contents are going: any deletion in them is a reason to look again.
    let mut emptying: HashSet<String> = HashSet::new();
    loop {
        let next = due.values().min().copied();
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                for ev in drain(ev, &mut rx) {
                    if ev.key == namespaces_key() {
                        if ev.kind == EventType::Deleted {
                            due.remove(&ev.name);
                            emptying.remove(&ev.name);
                        } else if ev.object.pointer("/metadata/deletionTimestamp").is_some() {
                            due.entry(ev.name.clone()).or_insert_with(|| Instant::now() + delay);
                        }
                    } else if ev.kind == EventType::Deleted && emptying.contains(&ev.namespace) {
                        due.insert(ev.namespace.clone(), Instant::now());
                    }
                }
            }
            _ = async { match next { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                let now = Instant::now();
                let ready: Vec<String> = due.iter().filter(|(_, at)| **at <= now).map(|(ns, _)| ns.clone()).collect();
                for ns in ready {
                    due.remove(&ns);
                    if empty_namespace(&store, &ns) {
                        emptying.remove(&ns);
                    } else {
                        emptying.insert(ns.clone());
                        // Also looked at again by time, should no deletion come to say so.
                        due.insert(ns, now + delay);
                    }
                }
            }
        }
    }
}

/// One pass over a terminating namespace; true when it is gone or not terminating.
fn empty_namespace(store: &Store, ns: &str) -> bool {
    let namespaces = info(store, "", "namespaces");
    let Some(namespace) = store.get(&namespaces_key(), "", ns) else {
        return true;
    };
    if namespace.pointer("/metadata/deletionTimestamp").is_none() {
        return true;
    }
    let pods = info(store, "", "pods");
    let live_pods = store.list_all(&pods.key(), Some(ns));
    let mut remaining: BTreeMap<String, usize> = BTreeMap::new();
    let mut finalizers: BTreeMap<String, usize> = BTreeMap::new();
    if !live_pods.is_empty() {
        for pod in &live_pods {
            if pod.pointer("/metadata/deletionTimestamp").is_none() {
                let _ = store.delete(&pods, ns, name_of(pod), &DeleteOptions::default());
            }
        }
        // Upstream reports no remaining content while it waits for pods.
        write_namespace_conditions(store, &namespaces, &namespace, &remaining, &finalizers);
        return false;
    }
    for resource in store.namespaced_resources() {
        for object in store.list_all(&resource.key(), Some(ns)) {
            let left = if object.pointer("/metadata/deletionTimestamp").is_some() {
                Some(object)
            } else {
                store
                    .delete(&resource, ns, name_of(&object), &DeleteOptions::default())
                    .ok()
                    .filter(|_| store.get(&resource.key(), ns, name_of(&object)).is_some())
            };
            let Some(left) = left else { continue };
            *remaining
                .entry(format!("{}.{}", resource.plural, resource.group))
                .or_default() += 1;
            for finalizer in left
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                *finalizers.entry(finalizer.to_string()).or_default() += 1;
            }
        }
    }
    if !remaining.is_empty() {
        write_namespace_conditions(store, &namespaces, &namespace, &remaining, &finalizers);
        return false;
    }
    let mut finalized = (*namespace).clone();
    if let Some(list) = finalized
        .pointer_mut("/spec/finalizers")
        .and_then(Value::as_array_mut)
    {
        list.retain(|f| f != crate::store::NAMESPACE_FINALIZER);
    }
    if let Some(md) = finalized.get_mut("metadata").and_then(Value::as_object_mut) {
        md.remove("resourceVersion");
    }
    if let Err(e) = store.update(&namespaces, "", ns, finalized, Sub::Finalize) {
        tracing::warn!(namespace = %ns, error = %e, "cannot finalize the namespace");
        return false;
    }
    let _ = store.delete(&namespaces, "", ns, &DeleteOptions::default());
    store.get(&namespaces_key(), "", ns).is_none()
}

/// The deletion conditions of a terminating namespace, worded as upstream's.
fn write_namespace_conditions(
    store: &Store,
    namespaces: &ResourceInfo,
    namespace: &Value,
    remaining: &BTreeMap<String, usize>,
    finalizers: &BTreeMap<String, usize>,
) {
    let joined = |counts: &BTreeMap<String, usize>, word: &str| {
        counts
            .iter()
            .map(|(what, n)| format!("{what} {word} {n} resource instances"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut wanted = vec![
        (
            "NamespaceDeletionDiscoveryFailure",
            "False",
            "ResourcesDiscovered",
            "All resources successfully discovered".to_string(),
        ),
        (
            "NamespaceDeletionGroupVersionParsingFailure",
            "False",
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".to_string(),
        ),
        (
            "NamespaceDeletionContentFailure",
            "False",
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".to_string(),
        ),
    ];
    wanted.push(if remaining.is_empty() {
        (
            "NamespaceContentRemaining",
            "False",
            "ContentRemoved",
            "All content successfully removed".to_string(),
        )
    } else {
        (
            "NamespaceContentRemaining",
            "True",
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", joined(remaining, "has")),
        )
    });
    wanted.push(if finalizers.is_empty() {
        (
            "NamespaceFinalizersRemaining",
            "False",
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished".to_string(),
        )
    } else {
        (
            "NamespaceFinalizersRemaining",
            "True",
            "SomeFinalizersRemain",
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                joined(finalizers, "in")
            ),
        )
    });
    let existing = namespace
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let now = util::now_rfc3339();
    let conditions: Vec<Value> = wanted
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let same = existing.iter().find(|c| {
                c["type"] == type_ && c["status"] == status && c["reason"] == reason && c["message"] == message.as_str()
            });
            match same {
                Some(c) => c.clone(),
                None => json!({"type": type_, "status": status, "lastTransitionTime": now, "reason": reason, "message": message}),
            }
        })
        .collect();
    if conditions == existing {
        return;
    }
    let patch = json!({"status": {"conditions": conditions}});
    let _ = store.patch(
        namespaces,
        "",
        name_of(namespace),
        PatchKind::Merge,
        &patch,
        Sub::Status,
    );
}

/// Background cascading deletion: dependents go when their controller owner goes.
pub async fn garbage_collector(store: Arc<Store>, mut rx: UnboundedReceiver<Arc<Event>>) {
    while let Some(ev) = rx.recv().await {
        for ev in drain(ev, &mut rx) {
            if ev.kind != EventType::Deleted {
                continue;
            }
            let Some(uid) = str_at(&ev.object, "/metadata/uid") else {
                continue;
            };
            for (key, ns, name) in store.dependents(uid) {
                let Some(dep) = store.get(&key, &ns, &name) else {
                    continue;
                };
                let refs = dep
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let owned_by_it = refs
                    .iter()
                    .any(|r| r["uid"] == uid && (r["controller"] == true || refs.len() == 1));
                if !owned_by_it || dep.pointer("/metadata/deletionTimestamp").is_some() {
                    continue;
                }
                if let Some(info) = store.resource_by_key(&key) {
                    let _ = store.delete(&info, &ns, &name, &DeleteOptions::default());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hash_is_stable_and_distinguishes_templates() {
        let a = json!({"spec": {"containers": [{"name": "a", "image": "x"}]}});
        let b = json!({"spec": {"containers": [{"name": "a", "image": "y"}]}});
        assert_eq!(template_hash(&a), template_hash(&a));
        assert_ne!(template_hash(&a), template_hash(&b));
    }
}
