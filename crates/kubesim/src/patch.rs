//! Patch types: JSON Patch, JSON merge patch and a strategic merge patch subset.

use crate::error::ApiError;
use serde_json::{Map, Value};

/// The patch flavours the API accepts, from the request's content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let base = ct.split(';').next().unwrap_or_default().trim();
        match base {
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchKind::Apply),
            _ => Err(ApiError::unsupported_media_type(ct)),
        }
    }
}

/// Parses a patch body into JSON (apply patches may be YAML).
pub fn parse_body(kind: PatchKind, body: &[u8]) -> Result<Value, ApiError> {
    match kind {
        PatchKind::Apply => {
            if let Ok(v) = serde_json::from_slice(body) {
                return Ok(v);
            }
            let text = std::str::from_utf8(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            serde_saphyr::from_str::<Value>(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        }
        _ => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}"))),
    }
}

/// Applies a patch to a document in place.
pub fn apply(kind: PatchKind, doc: &mut Value, patch: &Value) -> Result<(), ApiError> {
    match kind {
        PatchKind::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            // As the API server's JSON Patch library does, a `test` of `null` succeeds on a
            // path that does not exist (kube-runtime's finalizer relies on it).
            let mut patched = doc.clone();
            for op in p.0 {
                if let json_patch::PatchOperation::Test(t) = &op
                    && t.value.is_null()
                    && patched.pointer(t.path.as_str()).is_none()
                {
                    continue;
                }
                json_patch::patch(&mut patched, &[op]).map_err(|e| {
                    ApiError::unprocessable(format!(
                        "the server rejected our request due to an error in our request: {e}"
                    ))
                })?;
            }
            *doc = patched;
            Ok(())
        }
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: a merge patch must be a JSON object",
                ));
            }
            json_patch::merge(doc, patch);
            Ok(())
        }
        PatchKind::Strategic | PatchKind::Apply => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: a strategic merge patch must be a JSON object",
                ));
            }
            strategic_merge(doc, patch);
            Ok(())
        }
    }
}

/// Strategic merge: maps merge, known lists merge by key, `null` deletes.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(pm) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    match pm.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = clean(patch);
            return;
        }
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(tm) = target.as_object_mut() else {
        return;
    };
    for (k, v) in pm {
        if k == "$patch" || k.starts_with("$setElementOrder/") || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) = (tm.get_mut(field), v.as_array()) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        match v {
            Value::Null => {
                tm.remove(k);
            }
            Value::Object(_) => {
                let slot = tm.entry(k.clone()).or_insert(Value::Null);
                strategic_merge(slot, v);
                if slot.is_null() {
                    tm.remove(k);
                }
            }
            Value::Array(items) => {
                let merged = merge_list(k, tm.get(k), items);
                tm.insert(k.clone(), merged);
            }
            other => {
                tm.insert(k.clone(), other.clone());
            }
        }
    }
}

/// The merge key Kubernetes uses for a list field, when it merges rather than replaces.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let first_has = |k: &str| items.iter().any(|i| i.get(k).is_some());
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        "ports" if first_has("containerPort") => Some("containerPort"),
        "ports" => Some("port"),
        _ => None,
    }
}

fn merge_list(field: &str, current: Option<&Value>, items: &[Value]) -> Value {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .map(clean)
                .collect(),
        );
    }
    let current = current.and_then(Value::as_array);
    if field == "finalizers" {
        // ObjectMeta.finalizers is a set: strategic merge adds to it.
        let mut out: Vec<Value> = current.cloned().unwrap_or_default();
        for i in items {
            if !out.contains(i) {
                out.push(i.clone());
            }
        }
        return Value::Array(out);
    }
    let Some(key) = merge_key(field, items) else {
        return Value::Array(items.iter().map(clean).collect());
    };
    let mut out: Vec<Value> = current.cloned().unwrap_or_default();
    for item in items {
        let Some(id) = item.get(key) else {
            out.push(clean(item));
            continue;
        };
        let pos = out.iter().position(|o| o.get(key) == Some(id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(p), true) => {
                out.remove(p);
            }
            (None, true) => {}
            (Some(p), false) => strategic_merge(&mut out[p], item),
            (None, false) => out.push(clean(item)),
        }
    }
    Value::Array(out)
}

/// Removes patch directives (`$patch`, `$setElementOrder/...`) and nulls from a value.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name_and_deletes_nulls() {
        let mut doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}},
            "spec": {"containers": [{"name": "app", "image": "v1", "ports": [{"containerPort": 80}]}]}});
        let patch = json!({"metadata": {"labels": {"a": null, "c": "3"}},
            "spec": {"$setElementOrder/containers": [{"name": "app"}], "containers": [{"name": "app", "image": "v2"}]}});
        strategic_merge(&mut doc, &patch);
        assert_eq!(doc["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        assert_eq!(doc["spec"]["containers"][0]["image"], "v2");
        assert_eq!(
            doc["spec"]["containers"][0]["ports"][0]["containerPort"],
            80
        );
    }

    #[test]
    fn strategic_merge_replaces_unkeyed_lists_and_unions_finalizers() {
        let mut doc = json!({"metadata": {"finalizers": ["a"]}, "spec": {"args": ["x", "y"]}});
        strategic_merge(
            &mut doc,
            &json!({"metadata": {"finalizers": ["b"]}, "spec": {"args": ["z"]}}),
        );
        assert_eq!(doc["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(doc["spec"]["args"], json!(["z"]));
        strategic_merge(
            &mut doc,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(doc["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn json_patch_test_of_null_passes_on_a_missing_path_and_fails_on_a_present_one() {
        let mut doc = json!({"metadata": {"name": "a"}});
        let p = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}
        ]);
        apply(PatchKind::Json, &mut doc, &p).unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!(["f"]));
        // Now present: the same patch fails, and nothing of it applies.
        let before = doc.clone();
        assert!(apply(PatchKind::Json, &mut doc, &p).is_err());
        assert_eq!(doc, before);
    }

    #[test]
    fn json_patch_test_failure_is_unprocessable() {
        let mut doc = json!({"metadata": {"labels": {"a": "1"}}});
        let p = json!([{"op": "test", "path": "/metadata/labels/a", "value": "2"}]);
        let err = apply(PatchKind::Json, &mut doc, &p).unwrap_err();
        assert_eq!(err.code, 422);
        let bad = json!([{"op": "frobnicate"}]);
        assert_eq!(
            apply(PatchKind::Json, &mut doc, &bad).unwrap_err().code,
            400
        );
    }
}
