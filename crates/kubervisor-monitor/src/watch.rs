//! The running monitor: one watch per resource type, histories per KubervisorService
//! (`route.rs`), checked every `check_every` and once more at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::Api;
use kube::runtime::watcher;
use kubervisor_api::KubervisorService;
use tokio::task::JoinHandle;

use crate::route::Histories;
use crate::{Check, Decision, MonitorConfig, Seen, Violation, check};

/// How long the first listing of every watch may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("the monitor's kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("the monitor's configuration: {0}")]
    Config(String),
    #[error("the monitor's watches did not list within {0:?}")]
    ListTimeout(Duration),
}

/// A violation and the KubervisorService (`namespace/name`) whose history shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub resource: String,
    pub violation: Violation,
}

impl Finding {
    fn key(&self) -> (String, (Check, String, Timestamp)) {
        (self.resource.clone(), self.violation.key())
    }

    pub fn render(&self, start: Timestamp) -> String {
        format!("{}: {}", self.resource, self.violation.render(start))
    }
}

/// A running monitor.
pub struct Monitor {
    start: Timestamp,
    histories: Arc<Histories>,
    found: Arc<Mutex<Vec<Finding>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// What a finished monitor saw.
pub struct Report {
    pub violations: Vec<Finding>,
    pub records: usize,
    /// Decision events (ejections, re-activations, pauses, kills) seen.
    pub decisions: usize,
    /// Decision events by reason.
    pub decisions_by_reason: BTreeMap<String, usize>,
    pub start: Timestamp,
    text: String,
}

impl Report {
    /// Panics, printing every violation with its history, unless there is none.
    pub fn assert_clean(&self) {
        assert!(
            self.violations.is_empty(),
            "the invariant monitor found {} violation(s):\n{}",
            self.violations.len(),
            self.text
        );
        eprintln!(
            "invariant monitor: 0 violations over {} records ({} decision events)",
            self.records, self.decisions
        );
    }

    /// The first `n` violations, rendered with their histories.
    pub fn rendered(&self, n: usize) -> Vec<String> {
        self.violations
            .iter()
            .take(n)
            .map(|f| f.render(self.start))
            .collect()
    }
}

impl Monitor {
    /// Starts watching one KubervisorService, checking every second; returns once every
    /// watch has listed, so the baseline is recorded. Panics when it cannot (for tests).
    pub async fn start(kubeconfig: &Path, config: MonitorConfig) -> Monitor {
        Monitor::watch(kubeconfig, vec![config], Duration::from_secs(1))
            .await
            .expect("the invariant monitor starts")
    }

    /// Starts watching every KubervisorService of `configs` through one watch per resource
    /// type (their namespace, or every namespace when they are in several), checking each
    /// history every `check_every`; returns once every watch has listed.
    pub async fn watch(
        kubeconfig: &Path,
        configs: Vec<MonitorConfig>,
        check_every: Duration,
    ) -> Result<Monitor, MonitorError> {
        let file = kube::config::Kubeconfig::read_from(kubeconfig)
            .map_err(|e| MonitorError::Kubeconfig(e.to_string()))?;
        let mut client_config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .map_err(|e| MonitorError::Kubeconfig(e.to_string()))?;
        client_config.headers.push((
            http::HeaderName::from_static(kubesim::faults::OBSERVER_HEADER),
            http::HeaderValue::from_static("monitor"),
        ));
        let client = kube::Client::try_from(client_config)
            .map_err(|e| MonitorError::Kubeconfig(e.to_string()))?;
        let namespaces: BTreeSet<String> = configs.iter().map(|c| c.namespace.clone()).collect();
        let leases: BTreeSet<(String, String)> = configs
            .iter()
            .filter_map(|c| c.lease.clone().map(|l| (c.namespace.clone(), l)))
            .collect();
        let histories = Arc::new(Histories::new(configs).map_err(MonitorError::Config)?);
        let start = Timestamp::now();
        let (listed_tx, mut listed_rx) = tokio::sync::mpsc::channel::<()>(8);
        let mut tasks = Vec::new();
        fn scoped<K>(client: &kube::Client, namespaces: &BTreeSet<String>) -> Api<K>
        where
            K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
            K::DynamicType: Default,
        {
            match namespaces.iter().next() {
                Some(ns) if namespaces.len() == 1 => Api::namespaced(client.clone(), ns),
                _ => Api::all(client.clone()),
            }
        }

        let h = histories.clone();
        let gone = histories.clone();
        tasks.push(tokio::spawn(follow(
            scoped::<Pod>(&client, &namespaces),
            watcher::Config::default(),
            listed_tx.clone(),
            move |pod: &Pod, initial| h.pod(pod, initial),
            move |pod: &Pod| gone.pod_gone(pod),
        )));
        let h = histories.clone();
        let gone = histories.clone();
        tasks.push(tokio::spawn(follow(
            scoped::<KubervisorService>(&client, &namespaces),
            watcher::Config::default(),
            listed_tx.clone(),
            move |kvs: &KubervisorService, _| h.kvs(kvs),
            move |kvs: &KubervisorService| gone.kvs_gone(kvs),
        )));
        let h = histories.clone();
        tasks.push(tokio::spawn(follow(
            scoped::<Event>(&client, &namespaces),
            watcher::Config::default(),
            listed_tx.clone(),
            move |event: &Event, _| h.event(event),
            |_: &Event| {},
        )));
        let mut watches = 3;
        for (ns, lease) in &leases {
            let api: Api<Lease> = Api::namespaced(client.clone(), ns);
            let by_name = watcher::Config::default().fields(&format!("metadata.name={lease}"));
            let h = histories.clone();
            tasks.push(tokio::spawn(follow(
                api,
                by_name,
                listed_tx.clone(),
                move |lease: &Lease, _| h.lease(lease),
                |_: &Lease| {},
            )));
            watches += 1;
        }
        for _ in 0..watches {
            tokio::time::timeout(LIST_TIMEOUT, listed_rx.recv())
                .await
                .map_err(|_| MonitorError::ListTimeout(LIST_TIMEOUT))?;
        }
        let found: Arc<Mutex<Vec<Finding>>> = Arc::default();
        {
            let (histories, found) = (histories.clone(), found.clone());
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(check_every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let (histories, found) = (histories.clone(), found.clone());
                    // Replaying every history is CPU work: kept off the runtime's workers.
                    let pass = tokio::task::spawn_blocking(move || {
                        let now = Timestamp::now();
                        for target in &histories.targets {
                            let violations = {
                                let records = target.records();
                                check(&records, &target.config, start, now, false)
                            };
                            let mut found = found.lock().unwrap_or_else(|e| e.into_inner());
                            // An event may still come, however late: the final check judges
                            // what depends on events.
                            for violation in violations.into_iter().filter(|v| {
                                !matches!(v.check, Check::EventPerDecision | Check::ActivationEarly)
                            }) {
                                let finding = Finding {
                                    resource: target.resource(),
                                    violation,
                                };
                                if !found.iter().any(|f| f.key() == finding.key()) {
                                    eprintln!("invariant monitor: {}", finding.render(start));
                                    found.push(finding);
                                }
                            }
                        }
                    });
                    if pass.await.is_err() {
                        return;
                    }
                }
            }));
        }
        Ok(Monitor {
            start,
            histories,
            found,
            tasks,
        })
    }

    /// Records that the test SIGKILLed an operator process now.
    pub fn operator_killed(&self) {
        self.histories.operator_killed();
    }

    /// Records so far, every history together.
    pub fn records(&self) -> usize {
        self.histories.total_records()
    }

    /// Violations found so far by the running checks (events not judged until the end).
    pub fn violations_so_far(&self) -> usize {
        self.found.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn judge_all(&self, finished: bool) -> Vec<Finding> {
        let now = Timestamp::now();
        self.histories
            .targets
            .iter()
            .flat_map(|target| {
                let records = target.records();
                check(&records, &target.config, self.start, now, finished)
                    .into_iter()
                    .map(|violation| Finding {
                        resource: target.resource(),
                        violation,
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Lets events of the last decisions arrive (until the history is quiet for a second
    /// and clean, or the longest `settle` passed), stops watching and judges every history.
    pub async fn finish(self) -> Report {
        let settle = self
            .histories
            .targets
            .iter()
            .map(|t| t.config.limits.settle)
            .max()
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + settle;
        let mut last = (0, tokio::time::Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let records = self.histories.total_records();
            if records != last.0 {
                last = (records, tokio::time::Instant::now());
                continue;
            }
            let quiet = last.1.elapsed() >= Duration::from_secs(1);
            let clean = quiet && self.judge_all(true).is_empty();
            if clean || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        for task in &self.tasks {
            task.abort();
        }
        let mut violations = self.judge_all(true);
        for f in self.found.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if !violations.iter().any(|v| v.key() == f.key()) {
                violations.push(f.clone());
            }
        }
        violations.sort_by_key(|f| f.violation.at);
        let text: String = violations.iter().map(|f| f.render(self.start)).collect();
        let mut decisions_by_reason: BTreeMap<String, usize> = BTreeMap::new();
        let mut records = 0;
        for target in &self.histories.targets {
            let history = target.records();
            records += history.len();
            for record in history.iter() {
                // Each decision has an event on the pod and one on the resource: count one.
                if let Seen::Event(e) = &record.seen
                    && e.regarding_kind == "Pod"
                    && Decision::of_reason(&e.reason).is_some()
                {
                    *decisions_by_reason.entry(e.reason.clone()).or_default() += 1;
                }
            }
        }
        let decisions = self
            .histories
            .targets
            .iter()
            .map(|t| {
                t.records()
                    .iter()
                    .filter(|r| {
                        matches!(&r.seen, Seen::Event(e) if Decision::of_reason(&e.reason).is_some())
                    })
                    .count()
            })
            .sum();
        Report {
            violations,
            records,
            decisions,
            decisions_by_reason,
            start: self.start,
            text,
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Hands every version of `api`'s objects to `applied` (and deletions to `deleted`);
/// signals `listed` after the first listing.
async fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    listed: tokio::sync::mpsc::Sender<()>,
    applied: impl Fn(&K, bool),
    deleted: impl Fn(&K),
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    let mut stream = std::pin::pin!(watcher::watcher(api, config));
    let mut first = true;
    let mut listing: BTreeSet<String> = BTreeSet::new();
    let mut known: BTreeMap<String, K> = BTreeMap::new();
    let uid = |obj: &K| obj.meta().uid.clone().unwrap_or_default();
    while let Some(event) = stream.next().await {
        let Ok(event) = event else {
            continue;
        };
        match event {
            watcher::Event::Init => listing.clear(),
            watcher::Event::InitApply(obj) => {
                listing.insert(uid(&obj));
                applied(&obj, first);
                known.insert(uid(&obj), obj);
            }
            watcher::Event::InitDone => {
                // Gone while the watch was down: deleted, as far as the history goes.
                let gone: Vec<String> = known
                    .keys()
                    .filter(|k| !listing.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    if let Some(obj) = known.remove(&key) {
                        deleted(&obj);
                    }
                }
                if std::mem::take(&mut first) {
                    let _ = listed.send(()).await;
                }
            }
            watcher::Event::Apply(obj) => {
                applied(&obj, false);
                known.insert(uid(&obj), obj);
            }
            watcher::Event::Delete(obj) => {
                known.remove(&uid(&obj));
                deleted(&obj);
            }
        }
    }
}
