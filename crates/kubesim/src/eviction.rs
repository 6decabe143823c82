//! The `eviction` subresource of pods (`policy/v1` Eviction): a delete that a
//! PodDisruptionBudget may refuse with 429, as the API server does.
//!
//! Simplified on purpose: the budget is computed at eviction time from the pods that
//! match the PodDisruptionBudget's selector (expected = those pods, healthy = the Ready
//! ones not being deleted), instead of from the disruption controller's status and the
//! owning controller's scale.

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::selector::LabelSelector;
use crate::store::{DeleteOptions, Store};

fn is_healthy(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// An `intOrString` count or percentage of `of`; percentages round up, like the API server.
fn scaled(value: &Value, of: usize) -> Result<usize, ApiError> {
    if let Some(n) = value.as_u64() {
        return Ok(n as usize);
    }
    let percent = value
        .as_str()
        .and_then(|s| s.strip_suffix('%'))
        .and_then(|p| p.parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::from_code(
                500,
                format!("invalid PodDisruptionBudget value {value}: a count or a percentage"),
            )
        })?;
    Ok((of as u64 * percent).div_ceil(100) as usize)
}

/// Serves `POST pods/NAME/eviction`.
pub fn serve(store: &Store, namespace: &str, name: &str, body: &[u8]) -> Result<Value, ApiError> {
    let eviction: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding Eviction: {e}")))?;
    // Like the API server, a body without type information is taken as an Eviction.
    if !eviction["kind"].is_null() && eviction["kind"] != "Eviction" {
        return Err(ApiError::bad_request(format!(
            "the body of an eviction must be a policy/v1 Eviction, not {}",
            eviction["kind"]
        )));
    }
    let registry = store.registry();
    let pods = registry.lookup("", "v1", "pods").expect("pods are served");
    let pdbs = registry
        .lookup("policy", "v1", "poddisruptionbudgets")
        .expect("poddisruptionbudgets are served");
    // As the NamespaceLifecycle admission plugin: an eviction is a create.
    if store.namespace_terminating(namespace) {
        return Err(ApiError::namespace_terminating("pods", "", name, namespace));
    }
    let pod = store
        .get(&pods.key(), namespace, name)
        .ok_or_else(|| ApiError::not_found("pods", "", name))?;
    let budgets: Vec<_> = store
        .list_all(&pdbs.key(), Some(namespace))
        .into_iter()
        .filter(|b| {
            let selector = LabelSelector::from_object(&b["spec"]["selector"]);
            !selector.is_empty() && selector.matches_object(&pod)
        })
        .collect();
    if budgets.len() > 1 {
        return Err(ApiError::from_code(
            500,
            "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
        ));
    }
    // Pods already going away can always be evicted, as upstream allows.
    if let Some(budget) = budgets
        .first()
        .filter(|_| pod["metadata"]["deletionTimestamp"].is_null())
    {
        let selector = LabelSelector::from_object(&budget["spec"]["selector"]);
        let covered: Vec<_> = store
            .list_all(&pods.key(), Some(namespace))
            .into_iter()
            .filter(|p| selector.matches_object(p))
            .collect();
        let expected = covered.len();
        let healthy = covered.iter().filter(|p| is_healthy(p)).count();
        let desired = match (
            &budget["spec"]["minAvailable"],
            &budget["spec"]["maxUnavailable"],
        ) {
            (min, _) if !min.is_null() => scaled(min, expected)?,
            (_, max) if !max.is_null() => expected.saturating_sub(scaled(max, expected)?),
            _ => expected,
        };
        let allowed = healthy.saturating_sub(desired);
        // An unhealthy pod may go whenever the budget is met (IfHealthyBudget).
        let refused = if is_healthy(&pod) {
            allowed == 0
        } else {
            healthy < desired
        };
        if refused {
            let budget_name = budget["metadata"]["name"].as_str().unwrap_or_default();
            let mut error = ApiError::from_code(
                429,
                "Cannot evict pod as it would violate the pod's disruption budget.",
            );
            error.details = Some(json!({"causes": [{
                "reason": "DisruptionBudget",
                "message": format!(
                    "The disruption budget {budget_name} needs {desired} healthy pods and has {healthy} currently"
                ),
            }]}));
            return Err(error);
        }
    }
    // Only `deleteOptions`; other fields (kube-rs 5 sends `delete_options`) are unknown
    // to the API server, which drops them.
    let options = &eviction["deleteOptions"];
    let opts = DeleteOptions {
        grace_period_seconds: options["gracePeriodSeconds"].as_i64(),
        precondition_uid: options["preconditions"]["uid"].as_str().map(str::to_string),
        precondition_rv: options["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
    };
    store.delete(&pods, namespace, name, &opts)?;
    Ok(json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": 201,
    }))
}
