//! Which KubervisorService a record belongs to: one set of watches (pods, KubervisorServices,
//! events, Leases) feeds one history per resource watched, each judged by [`check`] as if
//! it had its own watches.
//!
//! - a pod goes to every resource in its namespace whose pod selector matches its labels;
//!   a pod that stops matching is gone for that resource, as a watch with that selector
//!   would show it;
//! - a KubervisorService goes to itself;
//! - an event regarding a KubervisorService goes to it; one regarding a pod goes to the
//!   resources that pod was shown to (to its `related` resource when the pod is unknown);
//!   other events matter to no check;
//! - a Lease goes to the resources that follow it; a kill of the operator goes to all.
//!
//! [`check`]: crate::check

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kubervisor_api::KubervisorService;

use crate::{MonitorConfig, Record, Seen, event_seen, kvs_seen, lease_seen, pod_seen};

/// An equality-based label selector: `a=b`, `a==b`, `a!=b`, `a`, `!a`, joined by commas.
#[derive(Clone, Debug, PartialEq)]
pub struct Selector(Vec<Requirement>);

#[derive(Clone, Debug, PartialEq)]
enum Requirement {
    Equals(String, String),
    Differs(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                Requirement::Differs(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::Absent(k.trim().into())
            } else if part.contains([' ', '(']) {
                return Err(format!(
                    "set-based requirement {part:?}: only equality-based selectors are supported"
                ));
            } else {
                Requirement::Exists(part.into())
            };
            requirements.push(requirement);
        }
        Ok(Selector(requirements))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::Differs(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }
}

/// One resource watched: its configuration, its selector, its history.
pub(crate) struct Target {
    pub config: MonitorConfig,
    selector: Selector,
    pub records: Mutex<Vec<Record>>,
}

impl Target {
    pub fn records(&self) -> MutexGuard<'_, Vec<Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `namespace/name` of the resource.
    pub fn resource(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.kvs)
    }
}

#[derive(Default)]
struct Routes {
    /// Per pod uid: the resources its last version went to.
    pods: HashMap<String, Vec<usize>>,
    /// Per (namespace, pod name): every resource a pod of that name went to, for its events.
    names: HashMap<(String, String), BTreeSet<usize>>,
    /// The last record per (resource, object uid): versions that change nothing the checks
    /// read (a status, a condition) are not recorded.
    last: HashMap<(usize, String), Seen>,
}

/// The histories of every resource watched, and how records reach them.
pub(crate) struct Histories {
    pub targets: Vec<Target>,
    routes: Mutex<Routes>,
}

impl Histories {
    pub fn new(configs: Vec<MonitorConfig>) -> Result<Histories, String> {
        let targets = configs
            .into_iter()
            .map(|config| {
                let selector = Selector::parse(&config.pod_selector)
                    .map_err(|e| format!("{}/{}: {e}", config.namespace, config.kvs))?;
                Ok(Target {
                    config,
                    selector,
                    records: Mutex::new(Vec::new()),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Histories {
            targets,
            routes: Mutex::default(),
        })
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records are stamped under the routing lock, so each history stays in time order.
    fn push(&self, target: usize, seen: Seen) {
        self.targets[target].records().push(Record {
            at: Timestamp::now(),
            seen,
        });
    }

    /// Pushes `seen` unless it is what `target` last recorded of `uid`.
    fn push_changed(&self, routes: &mut Routes, target: usize, uid: &str, seen: Seen) {
        let key = (target, uid.to_string());
        if routes.last.get(&key) != Some(&seen) {
            routes.last.insert(key, seen.clone());
            self.push(target, seen);
        }
    }

    fn by_name(&self, namespace: &str, kvs: &str) -> Option<usize> {
        self.targets
            .iter()
            .position(|t| t.config.namespace == namespace && t.config.kvs == kvs)
    }

    pub fn pod(&self, pod: &Pod, initial: bool) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let to: Vec<usize> = (0..self.targets.len())
            .filter(|&i| {
                let t = &self.targets[i];
                t.config.namespace == namespace && t.selector.matches(&labels)
            })
            .collect();
        let mut routes = self.routes();
        let before = routes.pods.remove(&uid).unwrap_or_default();
        for &left in before.iter().filter(|i| !to.contains(i)) {
            routes.last.remove(&(left, uid.clone()));
            self.push(
                left,
                Seen::PodGone {
                    name: name.clone(),
                    uid: uid.clone(),
                },
            );
        }
        let seen = Seen::Pod {
            pod: pod_seen(pod),
            initial,
        };
        for &target in &to {
            self.push_changed(&mut routes, target, &uid, seen.clone());
        }
        if !to.is_empty() {
            routes
                .names
                .entry((namespace, name))
                .or_default()
                .extend(to.iter().copied());
            routes.pods.insert(uid, to);
        }
    }

    pub fn pod_gone(&self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let mut routes = self.routes();
        for target in routes.pods.remove(&uid).unwrap_or_default() {
            self.push(
                target,
                Seen::PodGone {
                    name: name.clone(),
                    uid: uid.clone(),
                },
            );
        }
    }

    pub fn kvs(&self, kvs: &KubervisorService) {
        let namespace = kvs.metadata.namespace.as_deref().unwrap_or_default();
        let name = kvs.metadata.name.as_deref().unwrap_or_default();
        if let Some(target) = self.by_name(namespace, name) {
            let uid = kvs.metadata.uid.clone().unwrap_or_default();
            let mut routes = self.routes();
            self.push_changed(&mut routes, target, &uid, Seen::Kvs(Some(kvs_seen(kvs))));
        }
    }

    pub fn kvs_gone(&self, kvs: &KubervisorService) {
        let namespace = kvs.metadata.namespace.as_deref().unwrap_or_default();
        let name = kvs.metadata.name.as_deref().unwrap_or_default();
        if let Some(target) = self.by_name(namespace, name) {
            let _routes = self.routes();
            self.push(target, Seen::Kvs(None));
        }
    }

    pub fn event(&self, event: &Event) {
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let uid = event.metadata.uid.clone().unwrap_or_default();
        let seen = event_seen(event);
        let mut routes = self.routes();
        let to: Vec<usize> = match seen.regarding_kind.as_str() {
            "KubervisorService" => self
                .by_name(&namespace, &seen.regarding)
                .into_iter()
                .collect(),
            "Pod" => match routes
                .names
                .get(&(namespace.clone(), seen.regarding.clone()))
            {
                Some(known) => known.iter().copied().collect(),
                None => seen
                    .related
                    .as_deref()
                    .and_then(|kvs| self.by_name(&namespace, kvs))
                    .into_iter()
                    .collect(),
            },
            _ => Vec::new(),
        };
        for target in to {
            self.push_changed(&mut routes, target, &uid, Seen::Event(seen.clone()));
        }
    }

    pub fn lease(&self, lease: &Lease) {
        let namespace = lease.metadata.namespace.as_deref().unwrap_or_default();
        let name = lease.metadata.name.as_deref().unwrap_or_default();
        let uid = lease.metadata.uid.clone().unwrap_or_default();
        let seen = Seen::Lease(lease_seen(lease));
        let mut routes = self.routes();
        for target in 0..self.targets.len() {
            let config = &self.targets[target].config;
            if config.namespace == namespace && config.lease.as_deref() == Some(name) {
                self.push_changed(&mut routes, target, &uid, seen.clone());
            }
        }
    }

    pub fn operator_killed(&self) {
        let _routes = self.routes();
        for target in 0..self.targets.len() {
            self.push(target, Seen::OperatorKilled);
        }
    }

    pub fn total_records(&self) -> usize {
        self.targets.iter().map(|t| t.records().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_match_by_equality_inequality_and_presence() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())]
            .into_iter()
            .collect();
        let matches = |s: &str| Selector::parse(s).unwrap().matches(&labels);
        assert!(matches("app=web"));
        assert!(matches("app==web,!tier"));
        assert!(matches("app"));
        assert!(!matches("app!=web"));
        assert!(!matches("app=web,tier"));
        assert!(Selector::parse("app in (web)").is_err());
    }

    fn pod(name: &str, app: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": name, "labels": {"app": app}},
        }))
        .unwrap()
    }

    fn event(regarding: (&str, &str), related: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{}.x", regarding.1), "namespace": "ns",
                         "uid": format!("{}-{related}", regarding.1)},
            "eventTime": null,
            "reason": "PodEjected",
            "regarding": {"kind": regarding.0, "name": regarding.1},
            "related": {"kind": "KubervisorService", "name": related},
        }))
        .unwrap()
    }

    fn histories() -> Histories {
        let config = |kvs: &str| MonitorConfig {
            pod_selector: format!("app={kvs}"),
            ..MonitorConfig::web("ns")
        };
        let mut a = config("a");
        a.kvs = "a".into();
        let mut b = config("b");
        b.kvs = "b".into();
        Histories::new(vec![a, b]).unwrap()
    }

    fn seen(h: &Histories, target: usize) -> Vec<Seen> {
        h.targets[target]
            .records()
            .iter()
            .map(|r| r.seen.clone())
            .collect()
    }

    #[test]
    fn pods_and_their_events_go_to_the_resource_that_selects_them() {
        let h = histories();
        h.pod(&pod("a-1", "a"), true);
        h.pod(&pod("b-1", "b"), true);
        h.pod(&pod("c-1", "c"), true);
        // The same version again records nothing.
        h.pod(&pod("a-1", "a"), true);
        h.event(&event(("Pod", "a-1"), "a"));
        h.event(&event(("KubervisorService", "b"), "b-1"));
        // A pod never seen: its event goes by the resource it names.
        h.event(&event(("Pod", "b-9"), "b"));
        let a = seen(&h, 0);
        assert_eq!(a.len(), 2, "{a:?}");
        assert!(matches!(&a[0], Seen::Pod { pod, initial: true } if pod.name == "a-1"));
        assert!(matches!(&a[1], Seen::Event(e) if e.regarding == "a-1"));
        let b = seen(&h, 1);
        assert_eq!(b.len(), 3, "{b:?}");
        assert!(matches!(&b[2], Seen::Event(e) if e.regarding == "b-9"));
    }

    #[test]
    fn a_pod_that_stops_matching_is_gone_for_its_old_resource() {
        let h = histories();
        h.pod(&pod("p", "a"), true);
        h.pod(&pod("p", "b"), false);
        h.pod_gone(&pod("p", "b"));
        assert!(matches!(seen(&h, 0).last(), Some(Seen::PodGone { name, .. }) if name == "p"));
        let b = seen(&h, 1);
        assert_eq!(b.len(), 2, "{b:?}");
        assert!(matches!(&b[1], Seen::PodGone { .. }));
        h.operator_killed();
        assert!(matches!(seen(&h, 0).last(), Some(Seen::OperatorKilled)));
        assert!(matches!(seen(&h, 1).last(), Some(Seen::OperatorKilled)));
    }
}
