//! Differential conformance: every test runs one request script against kubesim and,
//! when `KUBERVISOR_TEST_KUBECONFIG` names one, against a real API server, then compares
//! the two transcripts: status codes, the `reason` of error Statuses, and the fields of
//! successful answers, less the differences pinned in `VOLATILE` and `DEFAULTED_BY_REAL`
//! (each with its reason; the crate README lists them too).
//!
//! Run against a real control plane:
//! `scripts/cluster.sh up DIR; KUBERVISOR_TEST_KUBECONFIG=DIR/kubeconfig cargo test -p kubesim --test conformance`

mod common;

use common::{encode, require_binary};
use futures::{AsyncBufReadExt, StreamExt};
use http_body_util::BodyExt;
use kubesim::testing::eventually;
use kubesim::{Sim, SimConfig};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

const REAL_KUBECONFIG: &str = "KUBERVISOR_TEST_KUBECONFIG";
const REQUIRE_REAL: &str = "KUBERVISOR_TEST_REQUIRE_REAL";
const WAIT: Duration = Duration::from_secs(20);

/// Values that differ between any two servers, or two runs of one: only their presence is
/// compared. Patterns are dotted paths; `*` is one segment, `**` any number of them, and a
/// pattern also covers everything below the path it names.
const VOLATILE: &[(&str, &str)] = &[
    ("**.metadata.uid", "random per object"),
    (
        "**.metadata.resourceVersion",
        "per-server counter; scripts record whether it changed",
    ),
    ("**.metadata.creationTimestamp", "wall clock"),
    ("**.metadata.deletionTimestamp", "wall clock"),
    (
        "metadata.continue",
        "opaque paging token; scripts record whether it is there",
    ),
    ("**.details.uid", "the uid of the deleted object"),
    ("**.involvedObject.uid", "the uid of an object of this run"),
    ("**.regarding.uid", "the uid of an object of this run"),
    (
        "**.involvedObject.resourceVersion",
        "the version of an object of this run",
    ),
    (
        "**.regarding.resourceVersion",
        "the version of an object of this run",
    ),
];

/// Fields the real server sets that kubesim leaves out: present on the real side only.
const DEFAULTED_BY_REAL: &[(&str, &str)] = &[
    (
        "**.metadata.managedFields",
        "kubesim keeps no field ownership (server-side apply is a strategic merge)",
    ),
    (
        "**.spec.template.metadata.creationTimestamp",
        "Go's zero metav1.Time in a template serialises as null",
    ),
    (
        "**.containers.*.imagePullPolicy",
        "pod defaults are not applied by kubesim",
    ),
    ("**.containers.*.terminationMessagePath", "pod defaults"),
    ("**.containers.*.terminationMessagePolicy", "pod defaults"),
    ("**.containers.*.resources", "pod defaults"),
    ("**.spec.template.spec.restartPolicy", "pod defaults"),
    ("**.spec.template.spec.dnsPolicy", "pod defaults"),
    ("**.spec.template.spec.schedulerName", "pod defaults"),
    ("**.spec.template.spec.securityContext", "pod defaults"),
    (
        "**.spec.template.spec.terminationGracePeriodSeconds",
        "pod defaults",
    ),
    (
        "**.spec.strategy",
        "deployment defaults (RollingUpdate 25%/25%)",
    ),
    ("**.spec.revisionHistoryLimit", "deployment defaults"),
    ("**.spec.progressDeadlineSeconds", "deployment defaults"),
    (
        "**.metadata.annotations.deployment\\.kubernetes\\.io/revision",
        "kubesim has no ReplicaSets, so no revisions",
    ),
    (
        "**.status.conditions",
        "CRD schema defaults (the project's CRD defaults conditions to []): kubesim ignores CRD schemas",
    ),
    (
        "**.status.podCount",
        "CRD schema defaults (the nbPods* counters default to 0): kubesim ignores CRD schemas",
    ),
    (
        "metadata.continue",
        "custom resource lists carry an empty continue; kubesim leaves it out",
    ),
    (
        "**.spec.conversion",
        "CRD defaults: conversion strategy None",
    ),
    (
        "**.spec.versions.*.schema.openAPIV3Schema.**",
        "the real server normalises CRD schemas; kubesim stores them as sent",
    ),
];

/// One answer of a backend to one step of a script.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    body: Value,
}

/// What a script saw, step by step; compared between the two backends.
#[derive(Default)]
struct Transcript {
    steps: Vec<(String, Reply)>,
}

impl Transcript {
    fn record(&mut self, step: &str, reply: &Reply) {
        self.steps.push((step.to_string(), reply.clone()));
    }

    /// A fact the script derived itself (a version changed, an order held), compared as is.
    fn fact(&mut self, step: &str, value: Value) {
        self.steps.push((
            step.to_string(),
            Reply {
                status: 0,
                body: value,
            },
        ));
    }
}

/// A server under test: kubesim in-process, or the real one.
struct Backend {
    name: &'static str,
    client: kube::Client,
    kubeconfig: PathBuf,
    /// The run's namespace; the same name on both backends so objects compare equal.
    ns: String,
    sim: Option<Sim>,
    _dir: tempfile::TempDir,
}

fn run_id() -> String {
    static SEQUENCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("conf-{}-{seq}-{}", std::process::id(), nanos % 100_000)
}

impl Backend {
    async fn kubesim(ns: &str) -> Backend {
        let sim = Sim::start(SimConfig {
            ready_delay: Duration::from_millis(100),
            ..SimConfig::default()
        })
        .await
        .expect("kubesim starts");
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).unwrap();
        Backend {
            name: "kubesim",
            client: sim.client(),
            kubeconfig,
            ns: ns.to_string(),
            sim: Some(sim),
            _dir: dir,
        }
    }

    /// The real server, or `None` (said loudly) when no kubeconfig names one.
    async fn real(ns: &str) -> Option<Backend> {
        let Some(path) = std::env::var_os(REAL_KUBECONFIG) else {
            if std::env::var_os(REQUIRE_REAL).is_some() {
                panic!("{REQUIRE_REAL} is set but {REAL_KUBECONFIG} is not");
            }
            eprintln!(
                "SKIPPED the real half of this conformance test: {REAL_KUBECONFIG} is not set, so kubesim ran alone and nothing was compared (start a server with `scripts/cluster.sh up DIR` and set {REAL_KUBECONFIG}=DIR/kubeconfig)"
            );
            return None;
        };
        let kubeconfig = PathBuf::from(path);
        let file = kube::config::Kubeconfig::read_from(&kubeconfig).expect("a readable kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .expect("a usable kubeconfig");
        Some(Backend {
            name: "real",
            client: kube::Client::try_from(config).expect("a client"),
            kubeconfig,
            ns: ns.to_string(),
            sim: None,
            _dir: tempfile::tempdir().unwrap(),
        })
    }

    /// Sends one request and returns its status and JSON body, whatever the status.
    async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Reply {
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::ACCEPT, "application/json")
            .body(kube::client::Body::from(bytes))
            .unwrap();
        let response = tokio::time::timeout(WAIT, self.client.send(request))
            .await
            .unwrap_or_else(|_| panic!("{} {method} {path}: no answer in {WAIT:?}", self.name))
            .unwrap_or_else(|e| panic!("{} {method} {path}: {e}", self.name));
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply { status, body }
    }

    async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, "application/json", None).await
    }

    async fn post(&self, path: &str, body: &Value) -> Reply {
        self.call("POST", path, "application/json", Some(body))
            .await
    }

    async fn put(&self, path: &str, body: &Value) -> Reply {
        self.call("PUT", path, "application/json", Some(body)).await
    }

    async fn patch(&self, path: &str, kind: &str, body: &Value) -> Reply {
        self.call("PATCH", path, kind, Some(body)).await
    }

    async fn delete(&self, path: &str, body: Option<&Value>) -> Reply {
        self.call("DELETE", path, "application/json", body).await
    }

    /// `/api/v1/namespaces/NS/RESOURCE` and the like, in this run's namespace.
    fn at(&self, prefix: &str, resource: &str) -> String {
        format!("{prefix}/namespaces/{}/{resource}", self.ns)
    }

    /// Runs kubectl against this backend; returns exit success and stdout.
    async fn kubectl(&self, args: &[&str]) -> Reply {
        let bin = require_binary("kubectl", "kubernetes-client");
        let home = self._dir.path();
        let out = tokio::time::timeout(
            WAIT,
            tokio::process::Command::new(bin)
                .args(args)
                .env("KUBECONFIG", &self.kubeconfig)
                .env("HOME", home)
                .output(),
        )
        .await
        .expect("kubectl finishes")
        .expect("kubectl runs");
        if !out.status.success() {
            eprintln!(
                "{}: kubectl {args:?}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Reply {
            status: if out.status.success() { 0 } else { 1 },
            body: Value::String(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        }
    }

    /// Reads a watch from `query` until `count` events came, or fails after the deadline.
    async fn watch(&self, path: &str, query: &str, count: usize) -> Vec<Value> {
        let uri = format!("{path}?watch=true&timeoutSeconds=10&{query}");
        let request = http::Request::get(&uri).body(Vec::new()).unwrap();
        let stream = self
            .client
            .request_stream(request)
            .await
            .unwrap_or_else(|e| panic!("{}: watch {uri}: {e}", self.name));
        let mut lines = Box::pin(stream.lines());
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while events.len() < count {
            match tokio::time::timeout_at(deadline, lines.next()).await {
                Ok(Some(Ok(line))) if line.trim().is_empty() => {}
                Ok(Some(Ok(line))) => {
                    let event: Value = serde_json::from_str(&line).unwrap();
                    // The real controller-manager may publish its root CA ConfigMap while a
                    // script runs (see ROOT_CA): watches leave it out, as lists do.
                    if event["object"]["metadata"]["name"] != ROOT_CA {
                        events.push(event);
                    }
                }
                other => panic!(
                    "{}: watch {uri} ended after {} of {count} events: {other:?}",
                    self.name,
                    events.len()
                ),
            }
        }
        events
    }

    async fn create_namespace(&self, name: &str) -> Reply {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        self.post("/api/v1/namespaces", &ns).await
    }

    /// Deletes what a run made outside its namespace, then the namespace.
    async fn clean_up(self, cluster_scoped: &[String]) {
        for path in cluster_scoped {
            self.delete(path, None).await;
        }
        self.delete(&format!("/api/v1/namespaces/{}", self.ns), None)
            .await;
        if let Some(sim) = self.sim {
            sim.shutdown().await;
        }
    }
}

/// Both backends of one test, with one fresh namespace name.
struct Pair {
    sim: Backend,
    real: Option<Backend>,
    /// Cluster-scoped objects the script made (paths), deleted at the end.
    cluster_scoped: Vec<String>,
}

impl Pair {
    async fn start() -> Pair {
        let ns = run_id();
        let sim = Backend::kubesim(&ns).await;
        let real = Backend::real(&ns).await;
        for b in std::iter::once(&sim).chain(real.as_ref()) {
            let created = b.create_namespace(&ns).await;
            assert_eq!(created.status, 201, "{}: {:?}", b.name, created.body);
        }
        Pair {
            sim,
            real,
            cluster_scoped: Vec::new(),
        }
    }

    /// Compares the transcripts and cleans both servers up.
    async fn finish(self, sim: Transcript, real: Option<Transcript>) {
        if let Some(backend) = self.real {
            backend.clean_up(&self.cluster_scoped).await;
        }
        self.sim.clean_up(&self.cluster_scoped).await;
        if let Some(real) = real {
            let differences = compare(&sim, &real);
            assert!(
                differences.is_empty(),
                "kubesim and the real API server differ ({} differences):\n{}",
                differences.len(),
                differences.join("\n")
            );
        }
    }
}

/// Runs one script on kubesim, then on the real server, then compares the transcripts.
macro_rules! on_both {
    ($script:ident) => {{
        let mut pair = Pair::start().await;
        let sim = $script(&pair.sim, &mut pair.cluster_scoped).await;
        let real = match &pair.real {
            Some(real) => Some($script(real, &mut Vec::new()).await),
            None => None,
        };
        pair.finish(sim, real).await;
    }};
}

// ---------------------------------------------------------------------------------------
// Comparison

fn path_matches(pattern: &str, path: &[String]) -> bool {
    let pattern: Vec<String> = split_pattern(pattern);
    fn go(p: &[String], s: &[String]) -> bool {
        match p.split_first() {
            None => true,
            Some((first, rest)) if first == "**" => (0..=s.len()).any(|skip| go(rest, &s[skip..])),
            Some((first, rest)) => {
                !s.is_empty() && (first == "*" || *first == s[0]) && go(rest, &s[1..])
            }
        }
    }
    go(&pattern, path)
}

/// Splits a dotted pattern; `\.` is a literal dot (for annotation keys).
fn split_pattern(pattern: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => parts.last_mut().unwrap().extend(chars.next()),
            '.' => parts.push(String::new()),
            c => parts.last_mut().unwrap().push(c),
        }
    }
    parts
}

fn allowed(list: &[(&str, &str)], path: &[String]) -> bool {
    list.iter().any(|(p, _)| path_matches(p, path))
}

/// Differences between two successful bodies, less the pinned ones. `null`, an empty
/// object and absent are the same to a client (Go omits or not, serde reads either way).
fn diff(
    step: &str,
    path: &mut Vec<String>,
    sim: Option<&Value>,
    real: Option<&Value>,
    out: &mut Vec<String>,
) {
    let sim = sim.filter(|v| !v.is_null());
    let real = real.filter(|v| !v.is_null());
    match (sim, real) {
        (None, None) => {}
        (Some(_), Some(_)) if allowed(VOLATILE, path) => {}
        (None, Some(_)) if allowed(DEFAULTED_BY_REAL, path) => {}
        // One side lacks a whole object: judge its fields one by one.
        (None, Some(Value::Object(b))) => {
            for (k, v) in b {
                path.push(k.clone());
                diff(step, path, None, Some(v), out);
                path.pop();
            }
        }
        (Some(Value::Object(a)), None) => {
            for (k, v) in a {
                path.push(k.clone());
                diff(step, path, Some(v), None, out);
                path.pop();
            }
        }
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                path.push(k.clone());
                diff(step, path, a.get(k), b.get(k), out);
                path.pop();
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                path.push(i.to_string());
                diff(step, path, Some(x), Some(y), out);
                path.pop();
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!(
            "  {step}: {}: kubesim {} / real {}",
            path.join("."),
            a.map_or("absent".into(), |v| v.to_string()),
            b.map_or("absent".into(), |v| v.to_string())
        )),
    }
}

fn compare(sim: &Transcript, real: &Transcript) -> Vec<String> {
    let mut out = Vec::new();
    for ((step, a), (real_step, b)) in sim.steps.iter().zip(&real.steps) {
        if step != real_step {
            out.push(format!(
                "  the scripts took different paths: kubesim {step:?} / real {real_step:?}"
            ));
            return out;
        }
        if a.status != b.status {
            out.push(format!(
                "  {step}: status: kubesim {} / real {} (kubesim {}, real {})",
                a.status, b.status, a.body, b.body
            ));
        } else if a.status >= 400 {
            // Clients branch on the code and the reason; messages are for people.
            for field in ["kind", "status", "reason", "code"] {
                if a.body.get(field) != b.body.get(field) {
                    out.push(format!(
                        "  {step}: Status {field}: kubesim {} / real {} (messages: {} / {})",
                        a.body[field], b.body[field], a.body["message"], b.body["message"]
                    ));
                }
            }
        } else {
            diff(
                step,
                &mut Vec::new(),
                Some(&a.body),
                Some(&b.body),
                &mut out,
            );
        }
    }
    if sim.steps.len() != real.steps.len() {
        out.push(format!(
            "  the scripts took {} steps on kubesim, {} on the real server",
            sim.steps.len(),
            real.steps.len()
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Helpers for scripts

fn rv(reply: &Reply) -> String {
    reply.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn names(list: &Reply) -> Value {
    list.body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| i["metadata"]["name"].clone())
                .collect()
        })
        .unwrap_or(Value::Null)
}

/// The real controller-manager publishes this ConfigMap in every namespace; kubesim runs no
/// such controller (pinned): lists leave it out on both sides.
const ROOT_CA: &str = "kube-root-ca.crt";

fn without_root_ca(mut list: Reply) -> Reply {
    if let Some(items) = list.body["items"].as_array_mut() {
        items.retain(|i| i["metadata"]["name"] != ROOT_CA);
    }
    list
}

fn configmap(name: &str, labels: Value, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": data})
}

fn deployment(name: &str, containers: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}},
        },
    })
}

// ---------------------------------------------------------------------------------------
// Scripts

async fn crud_script(b: &Backend, _: &mut Vec<String>) -> Transcript {
    let mut t = Transcript::default();
    let cms = b.at("/api/v1", "configmaps");
    let created = b
        .post(
            &cms,
            &configmap("cfg", json!({"app": "web"}), json!({"a": "1"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}: {}", b.name, created.body);
    t.record("create configmap", &created);
    t.record("get configmap", &b.get(&format!("{cms}/cfg")).await);
    t.record(
        "create an existing name",
        &b.post(&cms, &configmap("cfg", json!({}), json!({}))).await,
    );
    t.record(
        "get a missing name",
        &b.get(&format!("{cms}/nothing")).await,
    );

    let mut updated = created.body.clone();
    updated["data"]["a"] = json!("2");
    let put = b.put(&format!("{cms}/cfg"), &updated).await;
    t.record("update with the current resourceVersion", &put);
    t.fact(
        "update changes resourceVersion",
        json!(rv(&put) != rv(&created)),
    );
    let same = b.put(&format!("{cms}/cfg"), &put.body).await;
    t.record("no-op update", &same);
    t.fact(
        "no-op update keeps resourceVersion",
        json!(rv(&same) == rv(&put)),
    );
    updated["data"]["a"] = json!("3");
    t.record(
        "update with a stale resourceVersion",
        &b.put(&format!("{cms}/cfg"), &updated).await,
    );
    let mut unconditional = updated.clone();
    unconditional["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    t.record(
        "update without resourceVersion",
        &b.put(&format!("{cms}/cfg"), &unconditional).await,
    );
    let mut renamed = unconditional.clone();
    renamed["metadata"]["name"] = json!("other");
    t.record(
        "update with a body naming another object",
        &b.put(&format!("{cms}/cfg"), &renamed).await,
    );
    t.record(
        "create with an invalid name",
        &b.post(&cms, &configmap("Not_Valid", json!({}), json!({})))
            .await,
    );

    // Delete preconditions.
    let current = b.get(&format!("{cms}/cfg")).await;
    let uid = current.body["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    t.record(
        "delete with a wrong uid precondition",
        &b.delete(
            &format!("{cms}/cfg"),
            Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}})),
        )
        .await,
    );
    t.record(
        "delete with a stale resourceVersion precondition",
        &b.delete(
            &format!("{cms}/cfg"),
            Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": rv(&created)}})),
        )
        .await,
    );
    let deleted = b
        .delete(
            &format!("{cms}/cfg"),
            Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid, "resourceVersion": rv(&current)}})),
        )
        .await;
    t.record("delete with matching preconditions", &deleted);
    t.record("get after delete", &b.get(&format!("{cms}/cfg")).await);
    t.record("delete again", &b.delete(&format!("{cms}/cfg"), None).await);
    t
}

async fn list_script(b: &Backend, _: &mut Vec<String>) -> Transcript {
    let mut t = Transcript::default();
    let cms = b.at("/api/v1", "configmaps");
    for (name, labels) in [
        ("a-1", json!({"app": "web", "tier": "front"})),
        ("a-2", json!({"app": "web", "tier": "back"})),
        ("a-3", json!({"app": "db", "tier": "back"})),
        ("a-4", json!({"app": "web"})),
        (
            "a-5",
            json!({"app": "web", "tier": "front", "canary": "yes"}),
        ),
    ] {
        let reply = b
            .post(&cms, &configmap(name, labels, json!({"k": name})))
            .await;
        assert_eq!(reply.status, 201, "{}: {}", b.name, reply.body);
    }
    for selector in [
        "app=web",
        "app==web,tier=front",
        "app!=web",
        "tier in (front,back)",
        "tier notin (front)",
        "canary",
        "!canary,app=web",
        "app=nothing",
    ] {
        let reply = b
            .get(&format!("{cms}?labelSelector={}", encode(selector)))
            .await;
        t.record(
            &format!("list labelSelector {selector}"),
            &without_root_ca(reply),
        );
    }
    t.record(
        "list a malformed labelSelector",
        &b.get(&format!("{cms}?labelSelector={}", encode("app in (web")))
            .await,
    );
    for selector in [
        "metadata.name=a-2",
        "metadata.name!=a-2",
        &format!("metadata.namespace={}", b.ns),
    ] {
        let reply = without_root_ca(
            b.get(&format!("{cms}?fieldSelector={}", encode(selector)))
                .await,
        );
        t.fact(
            &format!("list fieldSelector {}", selector.replace(&b.ns, "NS")),
            json!({"status": reply.status, "names": names(&reply)}),
        );
    }
    t.record(
        "list a fieldSelector on a field the resource does not index",
        &b.get(&format!("{cms}?fieldSelector={}", encode("data.k=a-1")))
            .await,
    );

    // Paging: two by two, with a label selector.
    let mut seen = Vec::new();
    let mut token = String::new();
    for page in 0.. {
        let reply = b
            .get(&format!(
                "{cms}?limit=2&labelSelector={}&continue={}",
                encode("app=web"),
                encode(&token)
            ))
            .await;
        assert_eq!(reply.status, 200, "{}: {}", b.name, reply.body);
        token = reply.body["metadata"]["continue"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if page == 0 {
            t.record("list the first page", &reply);
            t.fact(
                "the first page has a continue token",
                json!(!token.is_empty()),
            );
        }
        // The real server may hand out a token to a last, empty page; kubesim never does,
        // and clients must take both: compare what the pages add up to.
        let page_names = names(&reply);
        assert!(
            page_names.as_array().unwrap().len() <= 2,
            "{}: {page_names}",
            b.name
        );
        seen.extend(page_names.as_array().unwrap().iter().cloned());
        if token.is_empty() || page > 5 {
            break;
        }
    }
    t.fact("the pages add up to the whole list", json!(seen));
    // Paging without a selector counts what remains; Secrets, as no controller adds any.
    let secrets = b.at("/api/v1", "secrets");
    for i in 1..=5 {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("s-{i}")}, "stringData": {"k": "v"}});
        let reply = b.post(&secrets, &secret).await;
        assert_eq!(reply.status, 201, "{}: {}", b.name, reply.body);
    }
    let first = b.get(&format!("{secrets}?limit=2")).await;
    t.record("list secrets limit=2 without selector", &first);
    t.record(
        "list secrets type=Opaque (a field secrets index)",
        &b.get(&format!(
            "{secrets}?limit=10&fieldSelector={}",
            encode("type=Opaque")
        ))
        .await,
    );
    t.record(
        "list with a malformed continue token",
        &b.get(&format!("{cms}?limit=3&continue=garbage")).await,
    );
    t
}

async fn watch_script(b: &Backend, _: &mut Vec<String>) -> Transcript {
    let mut t = Transcript::default();
    let cms = b.at("/api/v1", "configmaps");
    let first = b
        .post(
            &cms,
            &configmap("w-1", json!({"app": "web"}), json!({"v": "1"})),
        )
        .await;
    let from = rv(&first);
    let mut changed = first.body.clone();
    changed["data"]["v"] = json!("2");
    b.put(&format!("{cms}/w-1"), &changed).await;
    b.post(
        &cms,
        &configmap("w-2", json!({"app": "web"}), json!({"v": "1"})),
    )
    .await;
    b.post(&cms, &configmap("other", json!({"app": "db"}), json!({})))
        .await;
    // Leaves the selection: a DELETED event for a watch with app=web.
    b.patch(
        &format!("{cms}/w-2"),
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"app": "db"}}}),
    )
    .await;
    b.delete(&format!("{cms}/w-1"), None).await;

    let events = b
        .watch(
            &cms,
            &format!("resourceVersion={from}&labelSelector=app%3Dweb"),
            4,
        )
        .await;
    let seen: Vec<Value> = events
        .iter()
        .map(|e| {
            json!([
                e["type"],
                e["object"]["metadata"]["name"],
                e["object"]["data"]
            ])
        })
        .collect();
    t.fact("watch app=web from the first create", json!(seen));
    let versions: Vec<u64> = events
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    t.fact(
        "watch events come in resourceVersion order",
        json!(versions.windows(2).all(|w| w[0] < w[1])),
    );
    let all = b.watch(&cms, &format!("resourceVersion={from}"), 5).await;
    let seen: Vec<Value> = all
        .iter()
        .map(|e| json!([e["type"], e["object"]["metadata"]["name"]]))
        .collect();
    t.fact("watch everything from the first create", json!(seen));
    t
}

async fn patch_script(b: &Backend, _: &mut Vec<String>) -> Transcript {
    let mut t = Transcript::default();
    let cms = b.at("/api/v1", "configmaps");
    let created = b
        .post(
            &cms,
            &configmap("p", json!({"app": "web"}), json!({"a": "1", "b": "2"})),
        )
        .await;
    let path = format!("{cms}/p");
    let json_patch = b
        .patch(
            &path,
            "application/json-patch+json",
            &json!([
                {"op": "test", "path": "/data/a", "value": "1"},
                {"op": "replace", "path": "/data/a", "value": "10"},
                {"op": "add", "path": "/metadata/labels/tier", "value": "front"},
                {"op": "remove", "path": "/data/b"},
            ]),
        )
        .await;
    t.record("JSON Patch", &json_patch);
    t.fact(
        "JSON Patch changes resourceVersion",
        json!(rv(&json_patch) != rv(&created)),
    );
    t.record(
        "JSON Patch with a failing test",
        &b.patch(
            &path,
            "application/json-patch+json",
            &json!([{"op": "test", "path": "/data/a", "value": "1"}, {"op": "replace", "path": "/data/a", "value": "x"}]),
        )
        .await,
    );
    t.record(
        "JSON Patch removing a missing path",
        &b.patch(
            &path,
            "application/json-patch+json",
            &json!([{"op": "remove", "path": "/data/zz"}]),
        )
        .await,
    );
    t.record(
        "JSON Patch that is not a list",
        &b.patch(
            &path,
            "application/json-patch+json",
            &json!({"op": "remove"}),
        )
        .await,
    );
    t.record(
        "merge patch",
        &b.patch(
            &path,
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"tier": null, "x": "y"}}, "data": {"c": "3"}}),
        )
        .await,
    );
    t.record(
        "merge patch with a stale resourceVersion",
        &b.patch(
            &path,
            "application/merge-patch+json",
            &json!({"metadata": {"resourceVersion": rv(&created)}, "data": {"d": "4"}}),
        )
        .await,
    );
    t.record(
        "patch of a missing object",
        &b.patch(
            &format!("{cms}/nothing"),
            "application/merge-patch+json",
            &json!({"data": {}}),
        )
        .await,
    );
    t.record(
        "patch with an unknown content type",
        &b.patch(&path, "application/yaml", &json!({})).await,
    );

    // Strategic merge patch merges containers by name; generation bumps on spec changes only.
    let deployments = b.at("/apis/apps/v1", "deployments");
    let created = b
        .post(
            &deployments,
            &deployment(
                "smp",
                json!([{"name": "app", "image": "app:1"}, {"name": "side", "image": "side:1"}]),
            ),
        )
        .await;
    t.record("create deployment", &created);
    let path = format!("{deployments}/smp");
    let smp = b
        .patch(
            &path,
            "application/strategic-merge-patch+json",
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "image": "side:2"}]}}}}),
        )
        .await;
    t.fact(
        "strategic merge patch merges containers by name",
        json!({"status": smp.status, "containers": smp.body["spec"]["template"]["spec"]["containers"], "generation": smp.body["metadata"]["generation"]}),
    );
    let labels = b
        .patch(
            &path,
            "application/strategic-merge-patch+json",
            &json!({"metadata": {"labels": {"extra": "yes"}}}),
        )
        .await;
    t.fact(
        "a metadata-only patch keeps the generation",
        json!([
            labels.status,
            labels.body["metadata"]["generation"],
            labels.body["metadata"]["labels"]
        ]),
    );
    let replace = b
        .patch(
            &path,
            "application/strategic-merge-patch+json",
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:2"}, {"$patch": "replace"}]}}}}),
        )
        .await;
    t.fact(
        "strategic merge patch with $patch: replace",
        json!({"status": replace.status, "containers": replace.body["spec"]["template"]["spec"]["containers"], "generation": replace.body["metadata"]["generation"]}),
    );
    t
}

/// The project's CRD under a group of this run, so runs and other tests never share it.
fn project_crd(group: &str) -> Value {
    let mut crd = serde_json::to_value(kubervisor_api::crd()).unwrap();
    let plural = crd["spec"]["names"]["plural"].as_str().unwrap().to_string();
    crd["spec"]["group"] = json!(group);
    crd["metadata"]["name"] = json!(format!("{plural}.{group}"));
    crd
}

async fn custom_resource_script(b: &Backend, cluster_scoped: &mut Vec<String>) -> Transcript {
    let mut t = Transcript::default();
    let group = format!("{}.conformance.kubervisor.io", b.ns);
    let crd = project_crd(&group);
    let crd_path = format!(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{}",
        crd["metadata"]["name"].as_str().unwrap()
    );
    cluster_scoped.push(crd_path.clone());
    let created = b
        .post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            &crd,
        )
        .await;
    t.fact(
        "create CRD",
        json!([
            created.status,
            created.body["spec"]["names"],
            created.body["spec"]["scope"]
        ]),
    );
    eventually("the CRD to be Established and served", WAIT, || async {
        let crd = b.get(&crd_path).await;
        let established = crd.body["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Established" && c["status"] == "True");
        let served = b
            .get(&b.at(&format!("/apis/{group}/v1alpha1"), "kubervisorservices"))
            .await;
        if established && served.status == 200 {
            Ok(())
        } else {
            Err(format!("{} / {}", crd.body["status"], served.status))
        }
    })
    .await;
    let accepted = b.get(&crd_path).await;
    t.fact(
        "CRD status acceptedNames",
        accepted.body["status"]["acceptedNames"].clone(),
    );

    let kvs = b.at(&format!("/apis/{group}/v1alpha1"), "kubervisorservices");
    let body = json!({
        "apiVersion": format!("{group}/v1alpha1"), "kind": "KubervisorService",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"service": "web", "breakers": [{"name": "detector", "customService": "detector:8080"}]},
        "status": {"observedGeneration": 7},
    });
    let created = b.post(&kvs, &body).await;
    t.record(
        "create a custom resource (status in the body is dropped)",
        &created,
    );
    let path = format!("{kvs}/web");
    let status = b
        .patch(
            &format!("{path}/status"),
            "application/merge-patch+json",
            &json!({"spec": {"service": "ignored"}, "status": {"observedGeneration": 1, "podCount": {"nbPodsManaged": 3}}}),
        )
        .await;
    t.record("merge patch of /status changes only status", &status);
    t.fact(
        "a /status write keeps the generation",
        json!(status.body["metadata"]["generation"] == created.body["metadata"]["generation"]),
    );
    let mut main = status.body.clone();
    main["spec"]["service"] = json!("web2");
    main["status"]["observedGeneration"] = json!(99);
    let put = b.put(&path, &main).await;
    t.record("update of the main resource keeps status", &put);
    let mut status_put = put.body.clone();
    status_put["status"]["observedGeneration"] = json!(2);
    status_put["spec"]["service"] = json!("ignored");
    t.record(
        "update of /status changes only status",
        &b.put(&format!("{path}/status"), &status_put).await,
    );
    t.record(
        "update of /status with a stale resourceVersion",
        &b.put(&format!("{path}/status"), &status_put).await,
    );
    t.record(
        "list custom resources by label",
        &b.get(&format!("{kvs}?labelSelector=app%3Dweb")).await,
    );
    t.record(
        "JSON Patch of a custom resource",
        &b.patch(
            &path,
            "application/json-patch+json",
            // `add`, not `replace`: the real server defaulted dryRun from the schema, kubesim
            // did not (a pinned difference), and `replace` of a missing path fails.
            &json!([{"op": "add", "path": "/spec/dryRun", "value": true}]),
        )
        .await,
    );
    t.record(
        "strategic merge patch of a custom resource",
        &b.patch(
            &path,
            "application/strategic-merge-patch+json",
            &json!({"spec": {"dryRun": false}}),
        )
        .await,
    );
    t.record("delete a custom resource", &b.delete(&path, None).await);
    t
}

async fn events_script(b: &Backend, _: &mut Vec<String>) -> Transcript {
    let mut t = Transcript::default();
    let ns = &b.ns;
    let cm = b
        .post(
            &b.at("/api/v1", "configmaps"),
            &configmap("subject", json!({}), json!({})),
        )
        .await;
    let uid = cm.body["metadata"]["uid"].clone();
    let regarding = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "subject", "namespace": ns, "uid": uid});
    let new_events = b.at("/apis/events.k8s.io/v1", "events");
    let core_events = b.at("/api/v1", "events");

    let created = b
        .post(
            &new_events,
            &json!({
                "apiVersion": "events.k8s.io/v1", "kind": "Event",
                "metadata": {"name": "subject.ejected"},
                "eventTime": "2025-03-01T10:00:00.123456Z",
                "regarding": regarding,
                "note": "ejected: 62% errors", "reason": "PodEjected", "action": "Eject", "type": "Warning",
                "reportingController": "kubervisor.io/operator", "reportingInstance": "kubervisor-0",
            }),
        )
        .await;
    t.record("create through events.k8s.io/v1", &created);
    t.record(
        "list core v1 events by involvedObject.name",
        &b.get(&format!(
            "{core_events}?fieldSelector={}",
            encode("involvedObject.name=subject")
        ))
        .await,
    );
    t.record(
        "an events.k8s.io Event without eventTime",
        &b.post(
            &new_events,
            &json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "bad"},
                    "regarding": regarding, "note": "n", "reason": "R", "action": "A", "type": "Normal",
                    "reportingController": "kubervisor.io/operator", "reportingInstance": "i"}),
        )
        .await,
    );

    let core = b
        .post(
            &core_events,
            &json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "subject.started"},
                "involvedObject": {"apiVersion": "v1", "kind": "ConfigMap", "name": "subject", "namespace": ns, "uid": uid},
                "message": "Started", "reason": "Started", "type": "Normal",
                "source": {"component": "kubelet", "host": "node-a"},
                "firstTimestamp": "2025-03-01T10:00:00Z", "lastTimestamp": "2025-03-01T10:05:00Z",
                "count": 3,
            }),
        )
        .await;
    t.record("create through core v1", &core);
    t.record(
        "get through events.k8s.io/v1",
        &b.get(&format!("{new_events}/subject.started")).await,
    );
    t.record(
        "list events.k8s.io/v1 by regarding.name",
        &b.get(&format!(
            "{new_events}?fieldSelector={}",
            encode("regarding.name=subject")
        ))
        .await,
    );
    t.record(
        "list core v1 events by reason",
        &b.get(&format!(
            "{core_events}?fieldSelector={}",
            encode("reason=Started")
        ))
        .await,
    );
    t
}

async fn kubectl_script(b: &Backend, cluster_scoped: &mut Vec<String>) -> Transcript {
    let mut t = Transcript::default();
    let ns = b.ns.as_str();
    let extra_ns = format!("{ns}-kubectl");
    cluster_scoped.push(format!("/api/v1/namespaces/{extra_ns}"));
    t.record(
        "kubectl create namespace",
        &b.kubectl(&["create", "namespace", &extra_ns]).await,
    );
    let got = b.get(&format!("/api/v1/namespaces/{extra_ns}")).await;
    t.fact(
        "the namespace kubectl created",
        json!([
            got.status,
            got.body["metadata"]["name"],
            got.body["metadata"]["labels"],
            got.body["status"]["phase"]
        ]),
    );
    t.record(
        "kubectl create configmap",
        &b.kubectl(&[
            "create",
            "configmap",
            "cfg",
            "-n",
            ns,
            "--from-literal=a=1",
            "--from-literal=b=two",
        ])
        .await,
    );
    t.record(
        "get the configmap",
        &b.get(&format!("{}/cfg", b.at("/api/v1", "configmaps")))
            .await,
    );
    t.record(
        "kubectl create deployment",
        &b.kubectl(&[
            "create",
            "deployment",
            "web",
            "-n",
            ns,
            "--image=registry.example/web:1",
            "--replicas=2",
        ])
        .await,
    );
    let path = format!("{}/web", b.at("/apis/apps/v1", "deployments"));
    let created = b.get(&path).await;
    let mut spec_only = created.body.clone();
    spec_only.as_object_mut().unwrap().remove("status");
    t.fact("get the deployment (without status)", spec_only);
    t.record(
        "kubectl create deployment again",
        &b.kubectl(&[
            "create",
            "deployment",
            "web",
            "-n",
            ns,
            "--image=registry.example/web:1",
        ])
        .await,
    );
    t.record(
        "kubectl scale deployment",
        &b.kubectl(&["scale", "deployment", "web", "-n", ns, "--replicas=3"])
            .await,
    );
    let scaled = b.get(&path).await;
    t.fact(
        "the scaled deployment",
        json!([
            scaled.body["spec"]["replicas"],
            scaled.body["metadata"]["generation"],
            rv(&scaled) != rv(&created)
        ]),
    );
    let scale = b.get(&format!("{path}/scale")).await;
    t.fact(
        "its scale subresource",
        json!([
            scale.status,
            scale.body["apiVersion"],
            scale.body["kind"],
            scale.body["spec"],
            scale.body["metadata"]["name"],
            scale.body["status"]["selector"]
        ]),
    );
    t.record(
        "kubectl scale with a wrong --resource-version",
        &b.kubectl(&[
            "scale",
            "deployment",
            "web",
            "-n",
            ns,
            "--replicas=1",
            "--resource-version=1",
        ])
        .await,
    );
    t.record(
        "kubectl scale a missing deployment",
        &b.kubectl(&["scale", "deployment", "nothing", "-n", ns, "--replicas=1"])
            .await,
    );
    t
}

/// A finalizer of the scripts' own, which no controller removes.
const HOLD: &str = "conformance.kubervisor.io/hold";

/// What a refused create says, beyond the code and reason every step compares.
fn refusal(reply: &Reply) -> Value {
    json!([reply.status, reply.body["message"], reply.body["details"]])
}

async fn namespace_deletion_script(b: &Backend, _: &mut Vec<String>) -> Transcript {
    let mut t = Transcript::default();
    let ns_path = format!("/api/v1/namespaces/{}", b.ns);
    let cms = b.at("/api/v1", "configmaps");
    let mut held = configmap("held", json!({}), json!({"a": "1"}));
    held["metadata"]["finalizers"] = json!([HOLD]);
    let created = b.post(&cms, &held).await;
    assert_eq!(created.status, 201, "{}: {}", b.name, created.body);
    let plain = b
        .post(&cms, &configmap("plain", json!({}), json!({})))
        .await;
    assert_eq!(plain.status, 201, "{}: {}", b.name, plain.body);
    t.record(
        "a namespace holds the kubernetes finalizer",
        &b.get(&ns_path).await,
    );

    t.record("delete the namespace", &b.delete(&ns_path, None).await);
    t.record("delete it again", &b.delete(&ns_path, None).await);
    t.record("a terminating namespace", &b.get(&ns_path).await);
    let refused = b.post(&cms, &configmap("new", json!({}), json!({}))).await;
    t.record("create in a terminating namespace", &refused);
    t.fact("what the refusal says", refusal(&refused));
    let generated =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "gen-"}});
    t.fact(
        "a create with generateName is refused by its prefix",
        refusal(&b.post(&cms, &generated).await),
    );
    let regarding = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "held", "namespace": b.ns, "uid": created.body["metadata"]["uid"]});
    let new_style = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "held.released"},
        "eventTime": "2025-03-01T10:00:00.123456Z", "regarding": regarding,
        "note": "released", "reason": "Released", "action": "Release", "type": "Normal",
        "reportingController": "kubervisor.io/operator", "reportingInstance": "kubervisor-0",
    });
    t.fact(
        "an events.k8s.io Event is refused as any create",
        refusal(
            &b.post(&b.at("/apis/events.k8s.io/v1", "events"), &new_style)
                .await,
        ),
    );
    let core = json!({
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "held.core"},
        "involvedObject": regarding, "message": "m", "reason": "R", "type": "Normal",
    });
    t.fact(
        "a core Event is refused as any create",
        refusal(&b.post(&b.at("/api/v1", "events"), &core).await),
    );
    t.record(
        "an update in a terminating namespace is allowed",
        &b.patch(
            &format!("{cms}/held"),
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"seen": "yes"}}}),
        )
        .await,
    );
    let again = b.create_namespace(&b.ns).await;
    t.record("create the namespace again while it terminates", &again);
    t.fact("what that refusal says", json!(again.body["message"]));

    // The namespace controller deletes the contents; the finalizer holds one object.
    let marked = eventually("the contents to be deleted", WAIT, || async {
        let left = without_root_ca(b.get(&cms).await);
        let held = left.body["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["metadata"]["name"] == "held"))
            .cloned();
        match held {
            Some(h)
                if names(&left) == json!(["held"])
                    && h["metadata"]["deletionTimestamp"].is_string() =>
            {
                Ok(h)
            }
            _ => Err(names(&left).to_string()),
        }
    })
    .await;
    t.fact(
        "an object with a finalizer is marked and stays",
        json!([
            marked["metadata"]["deletionGracePeriodSeconds"],
            marked["metadata"]["finalizers"],
            marked["data"],
            marked["metadata"]["labels"]
        ]),
    );
    let conditions = eventually("the namespace to report what holds it", WAIT, || async {
        let ns = b.get(&ns_path).await;
        let conditions: Vec<Value> = ns.body["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| json!([c["type"], c["status"], c["reason"], c["message"]]))
            .collect();
        let held = conditions
            .iter()
            .any(|c| c[0] == "NamespaceFinalizersRemaining" && c[1] == "True");
        if held {
            Ok(conditions)
        } else {
            Err(format!("{conditions:?}"))
        }
    })
    .await;
    t.fact(
        "the conditions of a namespace held by a finalizer",
        json!(conditions),
    );

    let release = b
        .patch(
            &format!("{cms}/held"),
            "application/json-patch+json",
            &json!([{"op": "remove", "path": "/metadata/finalizers"}]),
        )
        .await;
    t.fact("the finalizer removed", json!(release.status));
    eventually("the namespace to be gone", WAIT, || async {
        let reply = b.get(&ns_path).await;
        if reply.status == 404 {
            Ok(())
        } else {
            Err(format!("{} {}", reply.status, reply.body["status"]))
        }
    })
    .await;
    t.record("the namespace is gone", &b.get(&ns_path).await);
    t.record(
        "a create in a namespace that is gone",
        &b.post(&cms, &configmap("late", json!({}), json!({}))).await,
    );
    t
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn create_get_update_conflicts_and_delete_preconditions() {
    on_both!(crud_script)
}

#[tokio::test]
async fn list_with_label_and_field_selectors_and_paging() {
    on_both!(list_script)
}

#[tokio::test]
async fn watch_from_a_resource_version() {
    on_both!(watch_script)
}

#[tokio::test]
async fn json_merge_and_strategic_patches() {
    on_both!(patch_script)
}

#[tokio::test]
async fn crd_then_custom_resource_with_status_subresource() {
    on_both!(custom_resource_script)
}

#[tokio::test]
async fn events_through_both_event_apis() {
    on_both!(events_script)
}

#[tokio::test]
async fn kubectl_protobuf_creates_and_scale() {
    on_both!(kubectl_script)
}

#[tokio::test]
async fn namespace_deletion_empties_then_removes_and_refuses_new_content() {
    on_both!(namespace_deletion_script)
}

#[test]
fn patterns_match_dotted_paths() {
    let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
    assert!(path_matches("**.metadata.uid", &p("metadata.uid")));
    assert!(path_matches("**.metadata.uid", &p("items.3.metadata.uid")));
    assert!(!path_matches("**.metadata.uid", &p("metadata.name")));
    assert!(path_matches("spec.*.image", &p("spec.0.image")));
    assert!(path_matches(
        "**.annotations.deployment\\.kubernetes\\.io/revision",
        &[
            "metadata".into(),
            "annotations".into(),
            "deployment.kubernetes.io/revision".into()
        ]
    ));
}
