//! Custom detectors: an HTTP GET answering a Kubernetes `PodList` of the anomalous pods.

use serde::Deserialize;
use serde_json::Value;

use super::prometheus::excerpt;
use super::{Request, SourceError};

#[derive(Deserialize)]
struct PodList {
    kind: Option<String>,
    // Go's encoder writes a nil slice as `null`: the original detectors answer "none" that way.
    items: Option<Vec<Value>>,
}

/// The names of the pods in a `PodList` answer.
pub(crate) fn parse_pod_list(request: &Request, body: &[u8]) -> Result<Vec<String>, SourceError> {
    let list: PodList = serde_json::from_slice(body).map_err(|e| {
        request.decode(format!(
            "the answer is not a PodList JSON object ({e}): {}",
            excerpt(body)
        ))
    })?;
    if let Some(kind) = list.kind.as_deref()
        && !kind.is_empty()
        && kind != "PodList"
    {
        return Err(request.decode(format!("the answer is a {kind}, expected a PodList")));
    }
    list.items
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.pointer("/metadata/name")
                .and_then(Value::as_str)
                .filter(|name| !name.is_empty())
                .map(str::to_string)
                .ok_or_else(|| request.decode(format!("PodList item {i} has no metadata.name")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request::Custom {
            url: "http://detector/anomalies".into(),
        }
    }

    #[test]
    fn pod_names_come_from_item_metadata() {
        let body = r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[
            {"metadata":{"name":"shop-1","namespace":"default"},"spec":{}},
            {"metadata":{"name":"shop-2"}}]}"#;
        assert_eq!(
            parse_pod_list(&request(), body.as_bytes()).unwrap(),
            ["shop-1", "shop-2"]
        );
    }

    #[test]
    fn empty_null_or_missing_items_mean_no_anomaly() {
        for body in [
            r#"{"items":[]}"#,
            r#"{"kind":"PodList","items":null}"#,
            "{}",
        ] {
            assert!(
                parse_pod_list(&request(), body.as_bytes())
                    .unwrap()
                    .is_empty()
            );
        }
    }

    #[test]
    fn anything_else_is_an_error_naming_the_detector() {
        for (body, reason) in [
            ("[]", "not a PodList"),
            ("<html>", "not a PodList"),
            (
                r#"{"kind":"Pod","metadata":{"name":"x"}}"#,
                "a Pod, expected a PodList",
            ),
            (
                r#"{"items":[{"metadata":{}}]}"#,
                "item 0 has no metadata.name",
            ),
            (
                r#"{"items":[{"metadata":{"name":""}}]}"#,
                "item 0 has no metadata.name",
            ),
            (r#"{"items":{"a":1}}"#, "not a PodList"),
        ] {
            let err = parse_pod_list(&request(), body.as_bytes()).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains(reason) && message.contains("http://detector/anomalies"),
                "{body}: {message}"
            );
        }
    }
}
