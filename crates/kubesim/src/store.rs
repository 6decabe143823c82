//! The object store: schemaless objects, one resourceVersion counter, an event log for watches.

use crate::error::ApiError;
use crate::patch::{self, PatchKind};
use crate::resources::{Registry, ResKey, ResourceInfo};
use crate::selector::{FieldSelector, LabelSelector};
use crate::util::{self, metadata_mut, name_of};
use crate::views::View;
use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::{broadcast, mpsc};

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the log and fanned out to watchers.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub key: ResKey,
    pub namespace: String,
    pub name: String,
    pub kind: EventType,
    pub object: Arc<Value>,
    /// The previous state, so selector watches can turn label changes into ADDED/DELETED.
    pub old: Option<Arc<Value>>,
    json: OnceLock<Bytes>,
}

impl Event {
    /// The object serialised once, however many watchers send it.
    pub fn object_json(&self) -> Bytes {
        self.json
            .get_or_init(|| Bytes::from(serde_json::to_vec(&*self.object).unwrap_or_default()))
            .clone()
    }
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Main,
    Status,
    /// A namespace's `finalize` subresource: only `spec.finalizers` changes.
    Finalize,
}

/// Options of a delete call.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

/// A page of a list call.
pub struct ListPage {
    pub items: Vec<Arc<Value>>,
    pub resource_version: u64,
    /// Key of the last item when more remain.
    pub next: Option<(String, String)>,
    /// How many objects remain after this page, when it is cut short and nothing is
    /// selected (the real server only counts then).
    pub remaining: Option<usize>,
}

/// How a watch begins: the current objects (rv unset or 0) or the events since an rv.
pub struct WatchStart {
    pub initial: Vec<Arc<Value>>,
    pub replay: Vec<Arc<Event>>,
    pub rx: broadcast::Receiver<Arc<Event>>,
    pub start_rv: u64,
}

type ObjKey = (String, String);

struct Inner {
    rv: u64,
    objects: HashMap<ResKey, BTreeMap<ObjKey, Arc<Value>>>,
    log: VecDeque<Arc<Event>>,
    /// Highest resourceVersion evicted from the log; watches from before it get 410.
    compacted_rv: u64,
    channels: HashMap<ResKey, broadcast::Sender<Arc<Event>>>,
    internal: Vec<mpsc::UnboundedSender<Arc<Event>>>,
    /// Owner uid to dependents, for garbage collection.
    owners: HashMap<String, HashSet<(ResKey, String, String)>>,
    registry: Registry,
    next_ip: u32,
}

/// The cluster state. Cheap to share behind an `Arc`.
pub struct Store {
    inner: Mutex<Inner>,
    log_capacity: usize,
    watch_buffer: usize,
}

const NS: &str = "namespaces";
/// The finalizer in every namespace's `spec.finalizers`, removed by the namespace
/// controller once the namespace is empty.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";

impl Store {
    pub fn new(log_capacity: usize) -> Self {
        let store = Store {
            inner: Mutex::new(Inner {
                rv: 0,
                objects: HashMap::new(),
                log: VecDeque::new(),
                compacted_rv: 0,
                channels: HashMap::new(),
                internal: Vec::new(),
                owners: HashMap::new(),
                registry: Registry::with_builtins(),
                next_ip: 1,
            }),
            log_capacity: log_capacity.max(16),
            watch_buffer: 16_384,
        };
        let ns_info = store.resource("", "v1", NS).expect("builtin");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            let _ = store.create(&ns_info, "", obj);
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock must not take the whole server down with poisoning.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.lock().registry.lookup(group, version, plural)
    }

    pub fn resource_by_key(&self, key: &ResKey) -> Option<Arc<ResourceInfo>> {
        self.lock().registry.by_key(key)
    }

    pub fn registry(&self) -> Registry {
        self.lock().registry.clone()
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// A feed of every change, for the built-in controllers; never drops events.
    pub fn subscribe_all(&self) -> mpsc::UnboundedReceiver<Arc<Event>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().internal.push(tx);
        rx
    }

    pub fn get(&self, key: &ResKey, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.lock()
            .objects
            .get(key)
            .and_then(|m| m.get(&(namespace.to_string(), name.to_string())))
            .cloned()
    }

    /// All objects of a resource, optionally in one namespace.
    pub fn list_all(&self, key: &ResKey, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let inner = self.lock();
        let Some(m) = inner.objects.get(key) else {
            return Vec::new();
        };
        match namespace {
            Some(ns) => m
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => m.values().cloned().collect(),
        }
    }

    /// One page of a list, in (namespace, name) order.
    pub fn list(
        &self,
        key: &ResKey,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        after: Option<ObjKey>,
    ) -> ListPage {
        let inner = self.lock();
        let mut page = ListPage {
            items: Vec::new(),
            resource_version: inner.rv,
            next: None,
            remaining: None,
        };
        let Some(m) = inner.objects.get(key) else {
            return page;
        };
        let start = match (&after, namespace) {
            (Some(k), _) => std::ops::Bound::Excluded(k.clone()),
            (None, Some(ns)) => std::ops::Bound::Included((ns.to_string(), String::new())),
            (None, None) => std::ops::Bound::Unbounded,
        };
        let mut objects = m.range((start, std::ops::Bound::Unbounded));
        while let Some(((ns, name), obj)) = objects.next() {
            if namespace.is_some_and(|want| want != ns) {
                break;
            }
            if !labels.matches_object(obj) || !fields.matches(obj) {
                continue;
            }
            if limit.is_some_and(|l| page.items.len() >= l) {
                let last = page
                    .items
                    .last()
                    .map(|o| (util::namespace_of(o).to_string(), name_of(o).to_string()));
                page.next = last.or(Some((ns.clone(), name.clone())));
                if labels.is_empty() && fields.is_empty() {
                    let rest = objects
                        .take_while(|((n, _), _)| namespace.is_none_or(|want| want == n))
                        .count();
                    page.remaining = Some(1 + rest);
                }
                break;
            }
            page.items.push(obj.clone());
        }
        page
    }

    /// Starts a watch: current objects when `since` is None, else the retained events after it.
    pub fn watch(&self, key: &ResKey, since: Option<u64>) -> Result<WatchStart, ApiError> {
        let mut inner = self.lock();
        if let Some(rv) = since
            && rv < inner.compacted_rv
        {
            return Err(ApiError::gone(format!(
                "too old resource version: {rv} ({})",
                inner.compacted_rv + 1
            )));
        }
        let buffer = self.watch_buffer;
        let rx = inner
            .channels
            .entry(key.clone())
            .or_insert_with(|| broadcast::channel(buffer).0)
            .subscribe();
        let (initial, replay) = match since {
            None => (
                inner
                    .objects
                    .get(key)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default(),
                Vec::new(),
            ),
            Some(rv) => {
                let from = inner.log.partition_point(|e| e.rv <= rv);
                (
                    Vec::new(),
                    inner
                        .log
                        .range(from..)
                        .filter(|e| e.key == *key)
                        .cloned()
                        .collect(),
                )
            }
        };
        Ok(WatchStart {
            initial,
            replay,
            rx,
            start_rv: inner.rv,
        })
    }

    /// Records a change: new resourceVersion, event log, watchers, owner index.
    fn commit(
        &self,
        inner: &mut Inner,
        key: &ResKey,
        kind: EventType,
        mut obj: Value,
        old: Option<Arc<Value>>,
    ) -> Arc<Value> {
        inner.rv += 1;
        let rv = inner.rv;
        metadata_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        let ns = util::namespace_of(&obj).to_string();
        let name = name_of(&obj).to_string();
        let obj = Arc::new(obj);
        let objects = inner.objects.entry(key.clone()).or_default();
        let okey = (ns.clone(), name.clone());
        match kind {
            EventType::Deleted => {
                objects.remove(&okey);
            }
            _ => {
                objects.insert(okey, obj.clone());
            }
        }
        let dep = (key.clone(), ns.clone(), name.clone());
        if let Some(o) = &old {
            for uid in owner_uids(o) {
                if let Some(set) = inner.owners.get_mut(&uid) {
                    set.remove(&dep);
                    if set.is_empty() {
                        inner.owners.remove(&uid);
                    }
                }
            }
        }
        if kind != EventType::Deleted {
            for uid in owner_uids(&obj) {
                inner.owners.entry(uid).or_default().insert(dep.clone());
            }
        }
        let event = Arc::new(Event {
            rv,
            key: key.clone(),
            namespace: ns,
            name,
            kind,
            object: obj.clone(),
            old,
            json: OnceLock::new(),
        });
        inner.log.push_back(event.clone());
        while inner.log.len() > self.log_capacity {
            if let Some(e) = inner.log.pop_front() {
                inner.compacted_rv = e.rv;
            }
        }
        if let Some(tx) = inner.channels.get(key)
            && tx.send(event.clone()).is_err()
        {
            inner.channels.remove(key);
        }
        inner.internal.retain(|tx| tx.send(event.clone()).is_ok());
        obj
    }

    /// Dependents (by owner reference) of an object uid.
    pub fn dependents(&self, owner_uid: &str) -> Vec<(ResKey, String, String)> {
        self.lock()
            .owners
            .get(owner_uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Creates an object, filling in server-set metadata.
    pub fn create(
        &self,
        info: &ResourceInfo,
        namespace: &str,
        mut obj: Value,
    ) -> Result<Arc<Value>, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        check_type(info, &obj)?;
        if info.namespaced && self.namespace_terminating(namespace) {
            // Named as the request named it, before any name is generated.
            let name = util::str_at(&obj, "/metadata/name")
                .filter(|n| !n.is_empty())
                .or_else(|| util::str_at(&obj, "/metadata/generateName"))
                .unwrap_or_default();
            return Err(ApiError::namespace_terminating(
                &info.plural,
                &info.group,
                name,
                namespace,
            ));
        }
        if let Some(view) = info.view() {
            view.validate_create(&obj)
                .map_err(|m| ApiError::invalid(&info.plural, "", name_of(&obj), m))?;
            let storage = storage_info(&self.lock(), view)?;
            return self.create(&storage, namespace, view.to_storage(&obj));
        }
        let key = info.key();
        let mut inner = self.lock();
        let md = metadata_mut(&mut obj);
        if md
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .is_empty()
        {
            match md.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let name = format!("{prefix}{}", util::name_suffix());
                    md.insert("name".into(), Value::String(name));
                }
                _ => {
                    return Err(ApiError::invalid(
                        &info.plural,
                        &info.group,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            }
        }
        let name = md
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !util::valid_name(&name) {
            return Err(ApiError::invalid(
                &info.plural,
                &info.group,
                &name,
                format!(
                    "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
                ),
            ));
        }
        if info.namespaced {
            match md.get("namespace").and_then(Value::as_str) {
                Some(ns) if !ns.is_empty() && ns != namespace => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
            md.insert("namespace".into(), Value::String(namespace.to_string()));
            let ns_exists = inner
                .objects
                .get(&ResKey::new("", NS))
                .is_some_and(|m| m.contains_key(&(String::new(), namespace.to_string())));
            if !ns_exists {
                return Err(ApiError::not_found(NS, "", namespace));
            }
        } else {
            md.remove("namespace");
        }
        let ns = if info.namespaced { namespace } else { "" };
        if let Some(existing) = inner
            .objects
            .get(&key)
            .and_then(|m| m.get(&(ns.to_string(), name.clone())))
        {
            let mut error = ApiError::already_exists(&info.plural, &info.group, &name);
            if existing.pointer("/metadata/deletionTimestamp").is_some() {
                error.message = format!("object is being deleted: {}", error.message);
            }
            return Err(error);
        }
        md.insert("uid".into(), Value::String(util::new_uid()));
        md.insert(
            "creationTimestamp".into(),
            Value::String(util::now_rfc3339()),
        );
        if info.tracks_generation() {
            md.insert("generation".into(), json!(1));
        } else {
            md.remove("generation");
        }
        md.remove("deletionTimestamp");
        md.remove("deletionGracePeriodSeconds");
        md.remove("resourceVersion");
        md.remove("managedFields");
        obj["apiVersion"] = Value::String(info.api_version());
        obj["kind"] = Value::String(info.kind.clone());
        if info.has_status
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        self.default_on_create(&mut inner, info, &mut obj)?;
        let created = self.commit(&mut inner, &key, EventType::Added, obj, None);
        if info.group == "apiextensions.k8s.io" && info.plural == "customresourcedefinitions" {
            register_crd(&mut inner, &created);
        }
        Ok(created)
    }

    fn default_on_create(
        &self,
        inner: &mut Inner,
        info: &ResourceInfo,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        match (info.group.as_str(), info.plural.as_str()) {
            ("", "pods") => {
                obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
                if obj
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty)
                {
                    return Err(ApiError::invalid(
                        &info.plural,
                        "",
                        name_of(obj),
                        "spec.containers: Required value",
                    ));
                }
            }
            ("", "namespaces") => {
                obj["status"] = json!({"phase": "Active"});
                // The namespace controller's finalizer: it holds the namespace while its
                // contents are deleted.
                if !obj.get("spec").is_some_and(Value::is_object) {
                    obj["spec"] = json!({});
                }
                let spec = &mut obj["spec"];
                if !spec.get("finalizers").is_some_and(Value::is_array) {
                    spec["finalizers"] = json!([]);
                }
                if let Some(finalizers) = spec["finalizers"].as_array_mut()
                    && !finalizers.contains(&json!(NAMESPACE_FINALIZER))
                {
                    finalizers.push(json!(NAMESPACE_FINALIZER));
                }
                // Set by the real server on every namespace, for namespace selectors.
                let name = json!(name_of(obj));
                let md = metadata_mut(obj);
                if !md.get("labels").is_some_and(Value::is_object) {
                    md.insert("labels".into(), json!({}));
                }
                md["labels"]["kubernetes.io/metadata.name"] = name;
            }
            // Go's Event has these without omitempty: a client reads "" and {}, not nothing.
            ("", "events") => {
                for (field, empty) in [
                    ("source", json!({})),
                    ("reportingComponent", json!("")),
                    ("reportingInstance", json!("")),
                ] {
                    if obj.get(field).is_none_or(Value::is_null) {
                        obj[field] = empty;
                    }
                }
            }
            // As upstream's defaulting: kubectl create secret generic leaves the type empty.
            ("", "secrets") => {
                if obj.get("type").is_none_or(|t| t.as_str() == Some("")) {
                    obj["type"] = json!("Opaque");
                }
                fold_string_data(obj);
            }
            ("", "services") => {
                if !obj.get("spec").is_some_and(Value::is_object) {
                    obj["spec"] = json!({});
                }
                let spec = &mut obj["spec"];
                if spec.get("type").is_none() {
                    spec["type"] = json!("ClusterIP");
                }
                if spec.get("clusterIP").is_none() {
                    inner.next_ip += 1;
                    let n = inner.next_ip;
                    // Loopback-range cluster IPs: nothing ever connects to them.
                    let ip = format!(
                        "127.{}.{}.{}",
                        128 + ((n >> 16) & 0x3f),
                        (n >> 8) & 0xff,
                        n & 0xff
                    );
                    spec["clusterIP"] = json!(ip);
                    spec["clusterIPs"] = json!([ip]);
                }
                if spec.get("sessionAffinity").is_none() {
                    spec["sessionAffinity"] = json!("None");
                }
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        if p.get("protocol").is_none() {
                            p["protocol"] = json!("TCP");
                        }
                        if p.get("targetPort").is_none()
                            && let Some(port) = p.get("port").cloned()
                        {
                            p["targetPort"] = port;
                        }
                    }
                }
                obj["status"] = json!({"loadBalancer": {}});
            }
            ("apps", "deployments") => {
                if !obj.get("spec").is_some_and(Value::is_object) {
                    return Err(ApiError::invalid(
                        &info.plural,
                        &info.group,
                        name_of(obj),
                        "spec: Required value",
                    ));
                }
                if obj.pointer("/spec/replicas").is_none() {
                    obj["spec"]["replicas"] = json!(1);
                }
                if obj.pointer("/spec/selector").is_none() {
                    return Err(ApiError::invalid(
                        &info.plural,
                        &info.group,
                        name_of(obj),
                        "spec.selector: Required value",
                    ));
                }
                obj["status"] = json!({});
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                let infos = Registry::infos_from_crd(obj)
                    .map_err(|m| ApiError::invalid(&info.plural, &info.group, name_of(obj), m))?;
                // listKind defaults to KIND + "List", in the spec and the accepted names.
                if let Some(names) = obj.pointer_mut("/spec/names")
                    && names.get("listKind").is_none()
                    && let Some(kind) = names.get("kind").and_then(Value::as_str)
                {
                    names["listKind"] = json!(format!("{kind}List"));
                }
                let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
                let stored: Vec<String> = infos.iter().map(|i| i.version.clone()).collect();
                let now = util::now_rfc3339();
                obj["status"] = json!({
                    "acceptedNames": names,
                    "storedVersions": stored.first().map(|v| vec![v.clone()]).unwrap_or_default(),
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
                    ],
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// Replaces an object (PUT), honouring resourceVersion preconditions and the status subresource.
    pub fn update(
        &self,
        info: &ResourceInfo,
        namespace: &str,
        name: &str,
        obj: Value,
        sub: Sub,
    ) -> Result<Arc<Value>, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        check_type(info, &obj)?;
        let body_name = util::str_at(&obj, "/metadata/name").unwrap_or_default();
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let mut inner = self.lock();
        if let Some(view) = info.view() {
            let storage = storage_info(&inner, view)?;
            return self.update_locked(
                &mut inner,
                &storage,
                namespace,
                name,
                view.to_storage(&obj),
                sub,
            );
        }
        self.update_locked(&mut inner, info, namespace, name, obj, sub)
    }

    fn update_locked(
        &self,
        inner: &mut Inner,
        info: &ResourceInfo,
        namespace: &str,
        name: &str,
        mut new: Value,
        sub: Sub,
    ) -> Result<Arc<Value>, ApiError> {
        let key = info.key();
        let ns = if info.namespaced { namespace } else { "" };
        let old = inner
            .objects
            .get(&key)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&info.plural, &info.group, name))?;
        let old_rv = util::str_at(&old, "/metadata/resourceVersion").unwrap_or_default();
        match util::str_at(&new, "/metadata/resourceVersion") {
            Some(rv) if !rv.is_empty() && rv != old_rv => {
                return Err(ApiError::conflict(&info.plural, &info.group, name));
            }
            _ => {}
        }
        let is_namespace = info.group.is_empty() && info.plural == NS;
        if sub == Sub::Finalize {
            let finalizers = new
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or(json!([]));
            new = (*old).clone();
            if !new.get("spec").is_some_and(Value::is_object) {
                new["spec"] = json!({});
            }
            new["spec"]["finalizers"] = finalizers;
        } else if sub == Sub::Status {
            let status = new.get("status").cloned();
            new = (*old).clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        } else {
            if info.has_status {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(o) = new.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
            let old_md = old.get("metadata").cloned().unwrap_or(json!({}));
            let md = metadata_mut(&mut new);
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old_md.get(field) {
                    Some(v) => md.insert(field.into(), v.clone()),
                    None => md.remove(field),
                };
            }
            md.remove("managedFields");
            // A namespace's finalizers change only through its `finalize` subresource.
            if is_namespace {
                let finalizers = old.pointer("/spec/finalizers").cloned();
                if !new.get("spec").is_some_and(Value::is_object) {
                    new["spec"] = json!({});
                }
                match finalizers {
                    Some(f) => new["spec"]["finalizers"] = f,
                    None => {
                        if let Some(spec) = new["spec"].as_object_mut() {
                            spec.remove("finalizers");
                        }
                    }
                }
            }
        }
        {
            let md = metadata_mut(&mut new);
            md.insert("name".into(), Value::String(name.to_string()));
            if info.namespaced {
                md.insert("namespace".into(), Value::String(namespace.to_string()));
            } else {
                md.remove("namespace");
            }
            md.insert("resourceVersion".into(), Value::String(old_rv.to_string()));
        }
        if info.group.is_empty() && info.plural == "secrets" {
            fold_string_data(&mut new);
        }
        new["apiVersion"] = old.get("apiVersion").cloned().unwrap_or(Value::Null);
        new["kind"] = old.get("kind").cloned().unwrap_or(Value::Null);
        if info.tracks_generation() && spec_of(&new) != spec_of(&old) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            metadata_mut(&mut new).insert("generation".into(), json!(generation + 1));
        }
        if new == *old {
            return Ok(old);
        }
        if info.plural == "customresourcedefinitions"
            && info.group == "apiextensions.k8s.io"
            && sub == Sub::Main
        {
            Registry::infos_from_crd(&new)
                .map_err(|m| ApiError::invalid(&info.plural, &info.group, name, m))?;
        }
        let terminating = new.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers_empty = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        // As the API server does: an update removes the object only once nothing holds it,
        // neither a finalizer nor a grace period still running (a pod being deleted
        // gracefully takes writes until the kubelet ends it).
        let grace_over = old
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_none_or(|g| g == 0);
        // A namespace goes only by a delete once its contents are gone (the namespace
        // controller's), never by an update.
        if terminating && finalizers_empty && grace_over && !is_namespace {
            return Ok(self.remove_locked(inner, info, new, Some(old)));
        }
        let updated = self.commit(inner, &key, EventType::Modified, new, Some(old));
        if info.plural == "customresourcedefinitions" && info.group == "apiextensions.k8s.io" {
            register_crd(inner, &updated);
        }
        Ok(updated)
    }

    /// Patches an object atomically; an apply patch creates it when missing.
    pub fn patch(
        &self,
        info: &ResourceInfo,
        namespace: &str,
        name: &str,
        kind: PatchKind,
        patch_body: &Value,
        sub: Sub,
    ) -> Result<Arc<Value>, ApiError> {
        let key = info.key();
        let ns = if info.namespaced { namespace } else { "" };
        let current = self.get(&key, ns, name);
        let Some(current) = current else {
            if kind == PatchKind::Apply && sub == Sub::Main {
                let mut obj = patch_body.clone();
                metadata_mut(&mut obj).insert("name".into(), Value::String(name.to_string()));
                return self.create(info, namespace, obj);
            }
            return Err(ApiError::not_found(&info.plural, &info.group, name));
        };
        let mut inner = self.lock();
        // Re-read under the lock so the patch applies to exactly the version it replaces.
        let current = inner
            .objects
            .get(&key)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
            .unwrap_or(current);
        // A patch through a view applies to the object as that view shows it.
        let view = info.view();
        let mut doc = match view {
            Some(v) => v.to_view(&current),
            None => (*current).clone(),
        };
        patch::apply(kind, &mut doc, patch_body)?;
        if !doc.is_object() {
            return Err(ApiError::unprocessable(
                "the patch did not produce an object",
            ));
        }
        check_type(info, &doc)?;
        let patched_name = util::str_at(&doc, "/metadata/name").unwrap_or_default();
        if patched_name != name {
            return Err(ApiError::invalid(
                &info.plural,
                &info.group,
                name,
                "metadata.name: Invalid value: field is immutable",
            ));
        }
        if let Some(view) = view {
            let storage = storage_info(&inner, view)?;
            let doc = view.to_storage(&doc);
            return self.update_locked(&mut inner, &storage, namespace, name, doc, sub);
        }
        self.update_locked(&mut inner, info, namespace, name, doc, sub)
    }

    /// Deletes an object, or marks it for deletion while finalizers or a grace period remain.
    pub fn delete(
        &self,
        info: &ResourceInfo,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Arc<Value>, ApiError> {
        let key = info.key();
        let ns = if info.namespaced { namespace } else { "" };
        let mut inner = self.lock();
        let old = inner
            .objects
            .get(&key)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&info.plural, &info.group, name))?;
        if let Some(uid) = &opts.precondition_uid
            && util::str_at(&old, "/metadata/uid") != Some(uid.as_str())
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    info.plural,
                    util::str_at(&old, "/metadata/uid").unwrap_or_default()
                ),
            ));
        }
        if let Some(rv) = &opts.precondition_rv
            && util::str_at(&old, "/metadata/resourceVersion") != Some(rv.as_str())
        {
            return Err(ApiError::conflict(&info.plural, &info.group, name));
        }
        let has_finalizers = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if info.group.is_empty() && info.plural == NS {
            return Ok(self.delete_namespace_locked(&mut inner, info, old, has_finalizers));
        }
        let is_pod = info.group.is_empty() && info.plural == "pods";
        let grace = opts.grace_period_seconds.unwrap_or_else(|| {
            if is_pod {
                old.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(30)
            } else {
                0
            }
        });
        let already_terminating = old.pointer("/metadata/deletionTimestamp").is_some();
        if has_finalizers || (is_pod && grace > 0 && !already_terminating) {
            if already_terminating {
                // A shorter grace period shortens a deletion under way (the kubelet's
                // final delete, with 0): removing the last finalizer then removes it.
                let current = old
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let shorter = opts
                    .grace_period_seconds
                    .filter(|g| (0..current).contains(g));
                let Some(grace) = shorter else {
                    return Ok(old);
                };
                let mut new = (*old).clone();
                let md = metadata_mut(&mut new);
                md.insert(
                    "deletionTimestamp".into(),
                    Value::String(util::rfc3339_in(grace)),
                );
                md.insert("deletionGracePeriodSeconds".into(), json!(grace));
                return Ok(self.commit(&mut inner, &key, EventType::Modified, new, Some(old)));
            }
            let mut new = (*old).clone();
            let md = metadata_mut(&mut new);
            md.insert(
                "deletionTimestamp".into(),
                Value::String(util::rfc3339_in(grace.max(0))),
            );
            md.insert("deletionGracePeriodSeconds".into(), json!(grace.max(0)));
            return Ok(self.commit(&mut inner, &key, EventType::Modified, new, Some(old)));
        }
        let obj = (*old).clone();
        Ok(self.remove_locked(&mut inner, info, obj, Some(old)))
    }

    /// The first delete of a namespace marks it `Terminating`; the namespace controller
    /// then empties it, removes its `kubernetes` finalizer and deletes it again, which
    /// removes it once no finalizer is left.
    fn delete_namespace_locked(
        &self,
        inner: &mut Inner,
        info: &ResourceInfo,
        old: Arc<Value>,
        has_finalizers: bool,
    ) -> Arc<Value> {
        if old.pointer("/metadata/deletionTimestamp").is_none() {
            let mut new = (*old).clone();
            metadata_mut(&mut new).insert(
                "deletionTimestamp".into(),
                Value::String(util::now_rfc3339()),
            );
            new["status"]["phase"] = json!("Terminating");
            let key = info.key();
            return self.commit(inner, &key, EventType::Modified, new, Some(old));
        }
        let held = has_finalizers
            || old
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
        if held {
            return old;
        }
        let obj = (*old).clone();
        self.remove_locked(inner, info, obj, Some(old))
    }

    /// Whether a namespace is being deleted: nothing new may be created in it.
    pub fn namespace_terminating(&self, namespace: &str) -> bool {
        self.lock()
            .objects
            .get(&ResKey::new("", NS))
            .and_then(|m| m.get(&(String::new(), namespace.to_string())))
            .is_some_and(|ns| ns.pointer("/metadata/deletionTimestamp").is_some())
    }

    /// Every namespaced resource as stored (views left out), once each.
    pub fn namespaced_resources(&self) -> Vec<Arc<ResourceInfo>> {
        let inner = self.lock();
        let mut seen = HashSet::new();
        inner
            .registry
            .groups
            .values()
            .flat_map(|resources| resources.values())
            .filter(|info| info.namespaced && info.view().is_none())
            .filter(|info| seen.insert(info.key()))
            .cloned()
            .collect()
    }

    fn remove_locked(
        &self,
        inner: &mut Inner,
        info: &ResourceInfo,
        obj: Value,
        old: Option<Arc<Value>>,
    ) -> Arc<Value> {
        let key = info.key();
        let name = name_of(&obj).to_string();
        let removed = self.commit(inner, &key, EventType::Deleted, obj, old);
        if info.group == "apiextensions.k8s.io" && info.plural == "customresourcedefinitions" {
            inner.registry.remove_crd(&name);
            let (g, p) = crd_group_plural(&removed);
            let k = ResKey::new(&g, &p);
            let victims: Vec<Arc<Value>> = inner
                .objects
                .get(&k)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            for v in victims {
                self.commit(inner, &k, EventType::Deleted, (*v).clone(), Some(v));
            }
            inner.objects.remove(&k);
        }
        removed
    }

    /// Writes from the built-in controllers: create, or replace when present (no precondition).
    pub fn upsert(
        &self,
        info: &ResourceInfo,
        namespace: &str,
        obj: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let name = name_of(&obj).to_string();
        if self
            .get(
                &info.key(),
                if info.namespaced { namespace } else { "" },
                &name,
            )
            .is_some()
        {
            let mut obj = obj;
            if let Some(md) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                md.remove("resourceVersion");
            }
            self.update(info, namespace, &name, obj, Sub::Main)
        } else {
            self.create(info, namespace, obj)
        }
    }

    /// Allocates the next simulated pod IP, from 127.64.0.0/10.
    pub fn allocate_pod_ip(&self) -> String {
        let mut inner = self.lock();
        inner.next_ip += 1;
        let n = inner.next_ip;
        format!(
            "127.{}.{}.{}",
            64 + ((n >> 16) & 0x3f),
            (n >> 8) & 0xff,
            n & 0xff
        )
    }
}

/// The resource a view's objects are stored as.
fn storage_info(inner: &Inner, view: View) -> Result<Arc<ResourceInfo>, ApiError> {
    let (group, version, plural) = view.storage_resource();
    inner
        .registry
        .lookup(group, version, plural)
        .ok_or_else(|| ApiError::internal(format!("no stored resource for {view:?}")))
}

fn crd_group_plural(crd: &Value) -> (String, String) {
    (
        util::str_at(crd, "/spec/group")
            .unwrap_or_default()
            .to_string(),
        util::str_at(crd, "/spec/names/plural")
            .unwrap_or_default()
            .to_string(),
    )
}

fn register_crd(inner: &mut Inner, crd: &Value) {
    let name = name_of(crd).to_string();
    inner.registry.remove_crd(&name);
    if let Ok(infos) = Registry::infos_from_crd(crd) {
        for i in infos {
            inner.registry.insert(i);
        }
    }
}

/// A Secret's `stringData` is write-only: the real server stores it base64-encoded in
/// `data`, where it wins over a key of the same name.
fn fold_string_data(secret: &mut Value) {
    use base64::Engine;
    let Some(Value::Object(strings)) = secret.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    if !secret.get("data").is_some_and(Value::is_object) {
        secret["data"] = json!({});
    }
    for (k, v) in strings {
        let text = v.as_str().unwrap_or_default();
        secret["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

/// Everything but metadata and status: what `metadata.generation` tracks.
fn spec_of(v: &Value) -> Vec<(&String, &Value)> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .collect()
        })
        .unwrap_or_default()
}

fn owner_uids(v: &Value) -> Vec<String> {
    v.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Rejects bodies whose apiVersion or kind name another type.
fn check_type(info: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
        && !av.is_empty()
    {
        let group = av.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        if group != info.group {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                info.api_version()
            )));
        }
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && !kind.is_empty()
        && kind != info.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            info.kind
        )));
    }
    if let Some(md) = obj.get("metadata")
        && !md.is_object()
    {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    Ok(())
}
