//! The `scale` subresource of Deployments: their replicas as an `autoscaling/v1` Scale,
//! which is what `kubectl scale` reads and patches.

use crate::error::ApiError;
use crate::patch::{self, PatchKind};
use crate::resources::ResourceInfo;
use crate::server::{parse_object, value_response};
use crate::store::{Store, Sub};
use crate::util::{self, str_at};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

/// Tries of a write whose resourceVersion kubesim filled in itself, before a conflict is
/// reported: another writer got in between the read and the write.
const ATTEMPTS: usize = 5;

/// Serves `GET`, `PUT` and `PATCH` of `NAME/scale`.
pub fn serve(
    store: &Store,
    info: &ResourceInfo,
    namespace: &str,
    name: &str,
    verb: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    match verb {
        "get" => Ok(value_response(
            StatusCode::OK,
            &scale_of(&*current(store, info, namespace, name)?),
        )),
        "update" => {
            let wanted = parse_object(headers, body)?;
            check_scale_type(&wanted)?;
            write(store, info, namespace, name, |_| Ok(wanted.clone()))
        }
        "patch" => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchKind::from_content_type(ct)?;
            if kind == PatchKind::Apply {
                return Err(ApiError::unsupported_media_type(ct));
            }
            let p = patch::parse_body(kind, body)?;
            write(store, info, namespace, name, |scale| {
                let mut scale = scale.clone();
                patch::apply(kind, &mut scale, &p)?;
                check_scale_type(&scale)?;
                Ok(scale)
            })
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({verb} {}/scale)",
            info.plural
        ))),
    }
}

fn current(
    store: &Store,
    info: &ResourceInfo,
    namespace: &str,
    name: &str,
) -> Result<std::sync::Arc<Value>, ApiError> {
    store
        .get(&info.key(), namespace, name)
        .ok_or_else(|| ApiError::not_found(&info.plural, &info.group, name))
}

/// Sets the Deployment's replicas from the Scale `change` makes of the current one.
fn write(
    store: &Store,
    info: &ResourceInfo,
    namespace: &str,
    name: &str,
    change: impl Fn(&Value) -> Result<Value, ApiError>,
) -> Result<Response, ApiError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let deployment = current(store, info, namespace, name)?;
        let before = scale_of(&deployment);
        let wanted = change(&before)?;
        let replicas = match wanted.pointer("/spec/replicas") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_i64()
                .filter(|r| (0..=i64::from(i32::MAX)).contains(r))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "deployments/scale",
                        "autoscaling",
                        name,
                        format!(
                            "spec.replicas: Invalid value: {v}: must be greater than or equal to 0"
                        ),
                    )
                })?,
        };
        // A Scale without a resourceVersion is unconditional; kubesim then pins the version
        // it read, and retries when another write got in between.
        let own_rv = str_at(&before, "/metadata/resourceVersion").unwrap_or_default();
        let rv = match str_at(&wanted, "/metadata/resourceVersion") {
            Some(rv) if !rv.is_empty() => rv.to_string(),
            _ => own_rv.to_string(),
        };
        let mut updated = (*deployment).clone();
        updated["spec"]["replicas"] = json!(replicas);
        util::metadata_mut(&mut updated).insert("resourceVersion".into(), json!(rv));
        match store.update(info, namespace, name, updated, Sub::Main) {
            Err(e) if e.code == 409 && rv == own_rv && attempt < ATTEMPTS => continue,
            Err(e) => return Err(e),
            Ok(d) => return Ok(value_response(StatusCode::OK, &scale_of(&d))),
        }
    }
}

fn check_scale_type(scale: &Value) -> Result<(), ApiError> {
    if !scale.is_object() {
        return Err(ApiError::bad_request("a Scale must be a JSON object"));
    }
    match (
        str_at(scale, "/apiVersion").unwrap_or_default(),
        str_at(scale, "/kind").unwrap_or_default(),
    ) {
        ("" | "autoscaling/v1", "" | "Scale") => Ok(()),
        (av, kind) => Err(ApiError::bad_request(format!(
            "the body of a scale subresource must be an autoscaling/v1 Scale, not {av} {kind}"
        ))),
    }
}

/// The `autoscaling/v1` Scale of a Deployment.
pub fn scale_of(deployment: &Value) -> Value {
    let md = deployment.get("metadata").cloned().unwrap_or(json!({}));
    let keep = [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ];
    let metadata: serde_json::Map<String, Value> = keep
        .iter()
        .filter_map(|k| md.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    let mut scale = json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {},
        "status": {
            "replicas": deployment.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
        },
    });
    if let Some(r) = deployment.pointer("/spec/replicas").and_then(Value::as_i64)
        && r != 0
    {
        scale["spec"]["replicas"] = json!(r);
    }
    let selector = deployment
        .pointer("/spec/selector")
        .map(selector_string)
        .unwrap_or_default();
    if !selector.is_empty() {
        scale["status"]["selector"] = json!(selector);
    }
    scale
}

/// A LabelSelector in the string form (`app=web,tier in (a,b)`), requirements sorted by key.
fn selector_string(selector: &Value) -> String {
    let mut reqs: Vec<(String, String)> = util::string_map(selector.get("matchLabels"))
        .into_iter()
        .map(|(k, v)| (k.clone(), format!("{k}={v}")))
        .collect();
    for e in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = str_at(e, "/key").unwrap_or_default().to_string();
        let mut values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|vs| vs.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        values.sort_unstable();
        let text = match str_at(e, "/operator").unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            _ => continue,
        };
        reqs.push((key, text));
    }
    reqs.sort();
    reqs.into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_scale_carries_replicas_and_the_selector_string() {
        let d = json!({
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7", "labels": {"x": "y"}},
            "spec": {"replicas": 3, "selector": {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}],
            }},
            "status": {"replicas": 2},
        });
        assert_eq!(
            scale_of(&d),
            json!({
                "kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"},
                "spec": {"replicas": 3},
                "status": {"replicas": 2, "selector": "app=web,tier in (a,b)"},
            })
        );
    }
}
