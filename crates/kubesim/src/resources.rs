//! The registry of served resource types: built-ins plus those defined by CRDs.

use crate::views::View;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One served resource type in one group/version.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub has_status: bool,
    /// Set for resources defined by a CRD (their objects go when it goes).
    pub crd: Option<String>,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Storage key: versions of one group/resource share their objects, and so do the
    /// two APIs of one resource (`events.k8s.io` Events are core Events).
    pub fn key(&self) -> ResKey {
        match self.view() {
            Some(view) => view.storage_key(),
            None => ResKey {
                group: self.group.clone(),
                plural: self.plural.clone(),
            },
        }
    }

    /// Set when this resource is another's objects in another shape.
    pub fn view(&self) -> Option<View> {
        if self.crd.is_some() {
            return None;
        }
        View::of(&self.group, &self.plural)
    }

    /// Whether the real server keeps `metadata.generation` for this resource: custom
    /// resources, CRDs, workloads, pods (since 1.33) and EndpointSlices; not ConfigMaps,
    /// Services, Namespaces, Events and the like.
    pub fn tracks_generation(&self) -> bool {
        self.crd.is_some()
            || matches!(
                (self.group.as_str(), self.plural.as_str()),
                ("", "pods")
                    | ("apps", _)
                    | ("discovery.k8s.io", "endpointslices")
                    | ("apiextensions.k8s.io", "customresourcedefinitions")
            )
    }

    /// Whether a delete answers with the deleted object (`ReturnDeletedObject` upstream)
    /// rather than a `Status` of success.
    pub fn returns_deleted_object(&self) -> bool {
        self.crd.is_none()
            && self.group.is_empty()
            && matches!(
                self.plural.as_str(),
                "pods" | "services" | "serviceaccounts" | "namespaces"
            )
    }

    /// Whether `NAME/scale` serves an `autoscaling/v1` Scale (what `kubectl scale` uses).
    pub fn has_scale(&self) -> bool {
        self.crd.is_none() && self.group == "apps" && self.plural == "deployments"
    }
}

/// Identifies stored objects of one resource independently of version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResKey {
    pub group: String,
    pub plural: String,
}

impl ResKey {
    pub fn new(group: &str, plural: &str) -> Self {
        ResKey {
            group: group.to_string(),
            plural: plural.to_string(),
        }
    }
}

/// Served resources by (group, version) then plural.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    pub groups: BTreeMap<(String, String), BTreeMap<String, Arc<ResourceInfo>>>,
}

struct Builtin(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    bool,
);

const BUILTINS: &[Builtin] = &[
    Builtin(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        true,
    ),
    Builtin("", "v1", "pods", "pod", "Pod", true, &["po"], true),
    Builtin(
        "",
        "v1",
        "services",
        "service",
        "Service",
        true,
        &["svc"],
        true,
    ),
    Builtin(
        "",
        "v1",
        "endpoints",
        "endpoints",
        "Endpoints",
        true,
        &["ep"],
        false,
    ),
    Builtin("", "v1", "events", "event", "Event", true, &["ev"], false),
    Builtin(
        "",
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
        false,
    ),
    Builtin("", "v1", "secrets", "secret", "Secret", true, &[], false),
    Builtin(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
        false,
    ),
    Builtin("", "v1", "nodes", "node", "Node", false, &["no"], true),
    Builtin(
        "apps",
        "v1",
        "deployments",
        "deployment",
        "Deployment",
        true,
        &["deploy"],
        true,
    ),
    Builtin(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
        &[],
        false,
    ),
    Builtin(
        "events.k8s.io",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        false,
    ),
    Builtin(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        true,
        &["pdb"],
        true,
    ),
    Builtin(
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        "Lease",
        true,
        &[],
        false,
    ),
    Builtin(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "role",
        "Role",
        true,
        &[],
        false,
    ),
    Builtin(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        &[],
        false,
    ),
    Builtin(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
        &[],
        false,
    ),
    Builtin(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        &[],
        false,
    ),
    Builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
    ),
];

impl Registry {
    pub fn with_builtins() -> Self {
        let mut r = Registry::default();
        for b in BUILTINS {
            r.insert(ResourceInfo {
                group: b.0.into(),
                version: b.1.into(),
                plural: b.2.into(),
                singular: b.3.into(),
                kind: b.4.into(),
                namespaced: b.5,
                short_names: b.6.iter().map(|s| s.to_string()).collect(),
                has_status: b.7,
                crd: None,
            });
        }
        r
    }

    pub fn insert(&mut self, info: ResourceInfo) {
        self.groups
            .entry((info.group.clone(), info.version.clone()))
            .or_default()
            .insert(info.plural.clone(), Arc::new(info));
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.groups
            .get(&(group.to_string(), version.to_string()))
            .and_then(|m| m.get(plural))
            .cloned()
    }

    pub fn has_group_version(&self, group: &str, version: &str) -> bool {
        self.groups
            .contains_key(&(group.to_string(), version.to_string()))
    }

    /// Any served version of a resource (for controllers that do not care which).
    pub fn by_key(&self, key: &ResKey) -> Option<Arc<ResourceInfo>> {
        self.groups
            .iter()
            .filter(|((g, _), _)| *g == key.group)
            .find_map(|(_, m)| m.get(&key.plural).cloned())
    }

    /// Drops every version defined by the named CRD.
    pub fn remove_crd(&mut self, crd_name: &str) {
        for m in self.groups.values_mut() {
            m.retain(|_, info| info.crd.as_deref() != Some(crd_name));
        }
        self.groups.retain(|_, m| !m.is_empty());
    }

    /// Resource infos described by a CRD object, one per served version.
    pub fn infos_from_crd(crd: &Value) -> Result<Vec<ResourceInfo>, String> {
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let spec = crd.get("spec").ok_or("spec: Required value")?;
        let group = spec
            .get("group")
            .and_then(Value::as_str)
            .ok_or("spec.group: Required value")?;
        let names = spec.get("names").ok_or("spec.names: Required value")?;
        let plural = names
            .get("plural")
            .and_then(Value::as_str)
            .ok_or("spec.names.plural: Required value")?;
        let kind = names
            .get("kind")
            .and_then(Value::as_str)
            .ok_or("spec.names.kind: Required value")?;
        if name != format!("{plural}.{group}") {
            return Err(format!(
                "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"
            ));
        }
        let singular = names
            .get("singular")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase());
        let short_names: Vec<String> = names
            .get("shortNames")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let namespaced = spec
            .get("scope")
            .and_then(Value::as_str)
            .unwrap_or("Namespaced")
            != "Cluster";
        let versions = spec
            .get("versions")
            .and_then(Value::as_array)
            .ok_or("spec.versions: Required value")?;
        let mut out = Vec::new();
        for v in versions {
            if v.get("served").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            let version = v
                .get("name")
                .and_then(Value::as_str)
                .ok_or("spec.versions[].name: Required value")?;
            let has_status = v.pointer("/subresources/status").is_some();
            out.push(ResourceInfo {
                group: group.to_string(),
                version: version.to_string(),
                plural: plural.to_string(),
                singular: singular.clone(),
                kind: kind.to_string(),
                namespaced,
                short_names: short_names.clone(),
                has_status,
                crd: Some(name.to_string()),
            });
        }
        Ok(out)
    }

    /// The `APIResourceList` for one group/version.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let m = self.groups.get(&(group.to_string(), version.to_string()))?;
        let mut resources = Vec::new();
        for info in m.values() {
            let verbs = [
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ];
            let mut r = json!({
                "name": info.plural,
                "singularName": info.singular,
                "namespaced": info.namespaced,
                "kind": info.kind,
                "verbs": verbs,
            });
            if !info.short_names.is_empty() {
                r["shortNames"] = json!(info.short_names);
            }
            resources.push(r);
            if info.has_status {
                resources.push(json!({
                    "name": format!("{}/status", info.plural),
                    "singularName": "",
                    "namespaced": info.namespaced,
                    "kind": info.kind,
                    "verbs": ["get", "patch", "update"],
                }));
            }
            if info.has_scale() {
                resources.push(json!({
                    "name": format!("{}/scale", info.plural),
                    "singularName": "",
                    "namespaced": info.namespaced,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": ["get", "patch", "update"],
                }));
            }
            if info.crd.is_none() && info.group.is_empty() && info.plural == "pods" {
                resources.push(json!({
                    "name": "pods/eviction",
                    "singularName": "",
                    "namespaced": true,
                    "group": "policy",
                    "version": "v1",
                    "kind": "Eviction",
                    "verbs": ["create"],
                }));
            }
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": resources,
        }))
    }

    /// The `APIGroup` objects of every named group.
    pub fn api_groups(&self) -> Vec<Value> {
        let mut by_group: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (g, v) in self.groups.keys() {
            if !g.is_empty() {
                by_group.entry(g).or_default().push(v);
            }
        }
        by_group
            .into_iter()
            .map(|(g, mut vs)| {
                vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
                let versions: Vec<Value> = vs
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                    .collect();
                json!({
                    "kind": "APIGroup",
                    "apiVersion": "v1",
                    "name": g,
                    "versions": versions,
                    "preferredVersion": versions[0],
                })
            })
            .collect()
    }
}

/// Kubernetes version ordering, roughly: GA > beta > alpha, higher numbers first.
fn version_priority(v: &str) -> (u8, u32, u32) {
    let rest = v.strip_prefix('v').unwrap_or(v);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        (3, major, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, major, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, major, n.parse().unwrap_or(0))
    } else {
        (0, major, 0)
    }
}
