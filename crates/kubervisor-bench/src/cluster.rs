//! The simulated cluster: kubesim, the generated fleet, and a tracker of the changes the
//! benchmark times (pod labels, Service endpoints), read from kubesim's store directly so
//! the driver sends no API request the operator's figures would include.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kubesim::resources::ResKey;
use kubesim::store::Event;
use kubesim::{Sim, SimConfig};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::detector::Detector;

pub const NAMESPACE: &str = "default";
const TRAFFIC_LABEL: &str = kubervisor_api::pod::TRAFFIC_LABEL;

/// kubesim tuned for benchmarks: pods ready after 100 ms, and a load generator ticking
/// once a second (its traffic is not used here: the detector is the driver's).
pub async fn start_sim() -> anyhow::Result<Sim> {
    Sim::start(SimConfig {
        ready_delay: Duration::from_millis(100),
        workload_tick: Duration::from_secs(1),
        ..SimConfig::default()
    })
    .await
}

/// The shape of a generated fleet: `services` Deployments, Services and KubervisorServices.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    pub services: usize,
    pub pods_per_service: usize,
    pub breakers: Vec<String>,
    /// Seconds.
    pub evaluation_period: f64,
    /// Seconds, of the `periodic` default activator.
    pub activator_period: f64,
    /// Default activators given to the services in turn, instead of the periodic one.
    pub activators: Vec<Value>,
    /// `minPodsAvailableCount` of every breaker.
    pub min_pods_available: u32,
}

impl FleetSpec {
    pub fn service_name(&self, i: usize) -> String {
        format!("svc-{i:05}")
    }

    pub fn service_names(&self) -> Vec<String> {
        (0..self.services).map(|i| self.service_name(i)).collect()
    }

    /// The detector keys (`NAMESPACE/KVS/BREAKER`) of every breaker.
    pub fn breaker_keys(&self) -> Vec<String> {
        self.service_names()
            .iter()
            .flat_map(|s| {
                self.breakers
                    .iter()
                    .map(move |b| format!("{NAMESPACE}/{s}/{b}"))
            })
            .collect()
    }
}

/// Creates the CRD, then the fleet, through the store (no HTTP, so it is quick and uncounted).
pub fn create_fleet(sim: &Sim, detector: &Detector, spec: &FleetSpec) -> anyhow::Result<()> {
    let store = sim.store();
    let resource = |group: &str, version: &str, plural: &str| {
        store
            .resource(group, version, plural)
            .with_context(|| format!("kubesim serves no {group}/{version} {plural}"))
    };
    let crds = resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")?;
    store
        .create(&crds, "", serde_json::to_value(kubervisor_api::crd())?)
        .map_err(|e| anyhow::anyhow!("creating the CRD: {e:?}"))?;
    let deployments = resource("apps", "v1", "deployments")?;
    let services = resource("", "v1", "services")?;
    let kvs = resource("kubervisor.k8s.io", "v1alpha1", "kubervisorservices")?;
    let periodic = json!({"mode": "periodic", "period": spec.activator_period});
    for (i, name) in spec.service_names().into_iter().enumerate() {
        let activator = if spec.activators.is_empty() {
            periodic.clone()
        } else {
            spec.activators[i % spec.activators.len()].clone()
        };
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": spec.pods_per_service,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name, TRAFFIC_LABEL: "yes"}},
                    "spec": {"containers": [{"name": "app", "image": "sim"}]},
                },
            },
        });
        let service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": name, TRAFFIC_LABEL: "yes"}, "ports": [{"port": 80}]},
        });
        let breakers: Vec<Value> = spec
            .breakers
            .iter()
            .map(|b| {
                json!({
                    "name": b,
                    "evaluationPeriod": spec.evaluation_period,
                    "minPodsAvailableCount": spec.min_pods_available,
                    "customService": detector.url(NAMESPACE, &name, b),
                })
            })
            .collect();
        let guard = json!({
            "apiVersion": "kubervisor.k8s.io/v1alpha1", "kind": "KubervisorService",
            "metadata": {"name": name},
            "spec": {
                "service": name,
                "breakers": breakers,
                "defaultActivator": activator,
            },
        });
        for (info, object) in [
            (&deployments, deployment),
            (&services, service),
            (&kvs, guard),
        ] {
            store
                .create(info, NAMESPACE, object)
                .map_err(|e| anyhow::anyhow!("creating {} {name}: {e:?}", info.plural))?;
        }
    }
    Ok(())
}

/// Names of the ready pods an `Endpoints` object lists.
fn ready_pods(endpoints: &Value) -> HashSet<String> {
    endpoints
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|s| {
            s.get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|a| a.pointer("/targetRef/name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// Waits until every Service lists `pods_per_service` ready pods.
pub async fn wait_fleet_ready(
    sim: &Sim,
    spec: &FleetSpec,
    timeout: Duration,
) -> anyhow::Result<()> {
    let key = ResKey::new("", "endpoints");
    let deadline = Instant::now() + timeout;
    loop {
        let full = sim
            .store()
            .list_all(&key, Some(NAMESPACE))
            .iter()
            .filter(|e| ready_pods(e).len() == spec.pods_per_service)
            .count();
        if full >= spec.services {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "after {timeout:?}, {full} of {} Services have {} ready pods",
                spec.services,
                spec.pods_per_service
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pods of the fleet whose `kubervisor/name` label is set: adopted by the operator.
pub fn adopted_pods(sim: &Sim) -> usize {
    sim.store()
        .list_all(&ResKey::new("", "pods"), Some(NAMESPACE))
        .iter()
        // Indexed, not `pointer`: that parses and unescapes the path for each pod, which
        // at 100,000 pods every half second took a quarter of the driver's CPU.
        .filter(|p| p["metadata"]["labels"].get("kubervisor/name").is_some())
        .count()
}

/// The fleet's KubervisorServices whose status reports a result for each of `breakers`
/// breakers: the operator has written what its start-up decided.
pub fn reported_resources(sim: &Sim, breakers: usize) -> usize {
    sim.store()
        .list_all(
            &ResKey::new("kubervisor.k8s.io", "kubervisorservices"),
            Some(NAMESPACE),
        )
        .iter()
        .filter(|kvs| {
            kvs["status"]["breakers"]
                .as_array()
                .is_some_and(|b| b.len() >= breakers)
        })
        .count()
}

/// When each timed change was seen, per pod.
#[derive(Debug, Default)]
pub struct Timeline {
    /// Ready pods per Service, from its `Endpoints`.
    ready: HashMap<String, HashSet<String>>,
    /// The pod left its Service's ready endpoints.
    pub left_endpoints: HashMap<String, Instant>,
    /// The pod came back into its Service's ready endpoints.
    pub joined_endpoints: HashMap<String, Instant>,
    /// The pod's traffic label went from `yes` to `no` (the ejection patch was applied).
    pub ejected: HashMap<String, Instant>,
    /// The pod's traffic label went from `no` to `yes`.
    pub activated: HashMap<String, Instant>,
}

impl Timeline {
    /// The ready pods of a Service now.
    pub fn ready(&self, service: &str) -> Vec<String> {
        let mut pods: Vec<String> = self
            .ready
            .get(service)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        pods.sort();
        pods
    }

    fn apply(&mut self, event: &Event, now: Instant) {
        match (event.key.group.as_str(), event.key.plural.as_str()) {
            ("", "endpoints") if event.namespace == NAMESPACE => {
                let now_ready = ready_pods(&event.object);
                let before = self.ready.remove(&event.name).unwrap_or_default();
                for pod in before.difference(&now_ready) {
                    self.left_endpoints.insert(pod.clone(), now);
                }
                for pod in now_ready.difference(&before) {
                    self.joined_endpoints.insert(pod.clone(), now);
                }
                self.ready.insert(event.name.clone(), now_ready);
            }
            ("", "pods") if event.namespace == NAMESPACE => {
                let traffic = |o: &Value| {
                    o.pointer("/metadata/labels/kubervisor~1traffic")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                let before = event.old.as_deref().and_then(traffic);
                let after = traffic(&event.object);
                match (before.as_deref(), after.as_deref()) {
                    (Some("yes"), Some("no")) => {
                        self.ejected.insert(event.name.clone(), now);
                    }
                    (Some("no"), Some("yes")) => {
                        self.activated.insert(event.name.clone(), now);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// Follows the store's change feed and timestamps what the benchmark measures.
pub struct Tracker {
    timeline: Arc<Mutex<Timeline>>,
    changes: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tracker {
    pub fn start(sim: &Sim) -> Tracker {
        let mut feed = sim.store().subscribe_all();
        // Subscribed first, so no change falls between this reading and the feed.
        let mut initial = Timeline::default();
        for endpoints in sim
            .store()
            .list_all(&ResKey::new("", "endpoints"), Some(NAMESPACE))
        {
            if let Some(name) = endpoints.pointer("/metadata/name").and_then(Value::as_str) {
                initial
                    .ready
                    .insert(name.to_string(), ready_pods(&endpoints));
            }
        }
        let timeline = Arc::new(Mutex::new(initial));
        let (tx, changes) = watch::channel(0u64);
        let task = {
            let timeline = timeline.clone();
            tokio::spawn(async move {
                let mut seen = 0u64;
                while let Some(event) = feed.recv().await {
                    let now = Instant::now();
                    timeline
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .apply(&event, now);
                    seen += 1;
                    tx.send_replace(seen);
                }
            })
        };
        Tracker {
            timeline,
            changes,
            task,
        }
    }

    pub fn timeline(&self) -> MutexGuard<'_, Timeline> {
        self.timeline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `found` gives a value, looking again at every change; `None` after `timeout`.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut found: impl FnMut(&Timeline) -> Option<T>,
    ) -> Option<T> {
        let mut changes = self.changes.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if let Some(value) = found(&self.timeline()) {
                return Some(value);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }
}
