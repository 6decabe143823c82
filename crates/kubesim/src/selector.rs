//! Label and field selectors, parsed from their query-string form.

use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    reqs: Vec<Req>,
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_top_level(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            reqs.push(parse_term(term)?);
        }
        Ok(LabelSelector { reqs })
    }

    /// Selector from a map (a Service's `spec.selector`): all pairs must match.
    pub fn from_map(m: &BTreeMap<String, String>) -> Self {
        LabelSelector {
            reqs: m
                .iter()
                .map(|(k, v)| Req::Eq(k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Selector from a `LabelSelector` object (`matchLabels` and `matchExpressions`).
    pub fn from_object(v: &Value) -> Self {
        let mut reqs = Vec::new();
        if let Some(m) = v.get("matchLabels").and_then(Value::as_object) {
            for (k, val) in m {
                reqs.push(Req::Eq(
                    k.clone(),
                    val.as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        if let Some(exprs) = v.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                match e
                    .get("operator")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                {
                    "In" => reqs.push(Req::In(key, values)),
                    "NotIn" => reqs.push(Req::NotIn(key, values)),
                    "Exists" => reqs.push(Req::Exists(key)),
                    "DoesNotExist" => reqs.push(Req::NotExists(key)),
                    _ => {}
                }
            }
        }
        LabelSelector { reqs }
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Matches the labels of an object (`metadata.labels`).
    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.reqs.is_empty() {
            return true;
        }
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.matches_with(get)
    }

    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.reqs.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::NotEq(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set, found {rest:?}"))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if let Some(bad) = values.iter().find(|v| !valid_value(v)) {
        return Err(format!("invalid label value: {bad:?}"));
    }
    Ok(values)
}

fn parse_term(term: &str) -> Result<Req, String> {
    let check = |k: &str| {
        if valid_key(k) {
            Ok(k.to_string())
        } else {
            Err(format!("invalid label key {k:?}"))
        }
    };
    let checkv = |v: &str| {
        if valid_value(v) {
            Ok(v.to_string())
        } else {
            Err(format!("invalid label value {v:?}"))
        }
    };
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Req::NotExists(check(k.trim())?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Req::NotEq(check(k.trim())?, checkv(v.trim())?));
    }
    if let Some((k, v)) = term.split_once("==") {
        return Ok(Req::Eq(check(k.trim())?, checkv(v.trim())?));
    }
    if let Some((k, v)) = term.split_once('=') {
        return Ok(Req::Eq(check(k.trim())?, checkv(v.trim())?));
    }
    let mut parts = term.splitn(2, char::is_whitespace);
    let key = parts.next().unwrap_or_default();
    match parts.next().map(str::trim_start) {
        None => Ok(Req::Exists(check(key)?)),
        Some(rest) => {
            if let Some(r) = rest.strip_prefix("notin") {
                Ok(Req::NotIn(check(key)?, parse_set(r)?))
            } else if let Some(r) = rest.strip_prefix("in") {
                Ok(Req::In(check(key)?, parse_set(r)?))
            } else {
                Err(format!("unable to parse requirement: {term:?}"))
            }
        }
    }
}

/// Whether the real server lets a list or watch of this resource select on `path`
/// (upstream's per-resource `GetAttrs`/field label conversions). Custom resources
/// allow only metadata here (kubesim ignores a CRD's `selectableFields`).
pub fn selectable_field(group: &str, plural: &str, custom: bool, path: &str) -> bool {
    if matches!(path, "metadata.name" | "metadata.namespace") {
        return true;
    }
    if custom {
        return false;
    }
    let extra: &[&str] = match (group, plural) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "secrets") => &["type"],
        ("", "namespaces") => &["status.phase"],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "services") => &["spec.clusterIP", "spec.type"],
        ("apps", "replicasets") => &["status.replicas"],
        _ => &[],
    };
    extra.contains(&path)
}

/// A parsed field selector: equality and inequality on dotted paths.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector {
    reqs: Vec<(Vec<String>, bool, String)>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in s.split(',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (k, eq, v) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!(
                    "invalid selector: {term:?}; can't understand '{term}'"
                ));
            };
            let path: Vec<String> = k.trim().split('.').map(str::to_string).collect();
            if path.iter().any(String::is_empty) {
                return Err(format!("invalid field selector key {k:?}"));
            }
            reqs.push((path, eq, v.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// The name the selector pins with `metadata.name=`, to skip a full scan.
    pub fn pinned_name(&self) -> Option<&str> {
        self.reqs
            .iter()
            .find(|(p, eq, _)| *eq && p.len() == 2 && p[0] == "metadata" && p[1] == "name")
            .map(|(_, _, v)| v.as_str())
    }

    /// Renames each path's first segment, for selectors written against another shape of
    /// the objects (an `events.k8s.io` Event's `regarding` is the stored `involvedObject`).
    /// The dotted paths this selector compares.
    pub fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.reqs.iter().map(|(path, _, _)| path.join("."))
    }

    pub fn rename_roots(mut self, rename: impl Fn(&str) -> &str) -> Self {
        for (path, _, _) in &mut self.reqs {
            if let Some(first) = path.first_mut() {
                *first = rename(first).to_string();
            }
        }
        self
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(path, eq, want)| {
            let mut cur = Some(obj);
            for seg in path {
                cur = cur.and_then(|c| c.get(seg));
            }
            let got = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (got == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels}, "status": {"phase": "Running"}})
    }

    #[test]
    fn every_label_operator_matches_like_kubernetes() {
        let p = pod(json!({"app": "web", "kubervisor/traffic": "yes"}));
        let ok = |s: &str| LabelSelector::parse(s).unwrap().matches_object(&p);
        assert!(ok("app=web"));
        assert!(ok("app==web,kubervisor/traffic=yes"));
        assert!(!ok("app!=web"));
        assert!(ok("app in (web, api)"));
        assert!(!ok("app notin (web,api)"));
        assert!(ok("tier notin (db)"));
        assert!(ok("app"));
        assert!(!ok("!app"));
        assert!(ok("!tier"));
        assert!(ok(""));
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b c").is_err());
    }

    #[test]
    fn field_selectors_compare_dotted_paths() {
        let p = pod(json!({}));
        let ok = |s: &str| FieldSelector::parse(s).unwrap().matches(&p);
        assert!(ok("metadata.name=p"));
        assert!(ok("metadata.namespace==ns,status.phase=Running"));
        assert!(!ok("status.phase!=Running"));
        assert!(ok("spec.nodeName="));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
