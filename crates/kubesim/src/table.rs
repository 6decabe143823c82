//! `meta.k8s.io/v1` Table responses, which `kubectl get` asks for: the columns a real
//! API server prints (a CRD's additionalPrinterColumns, the pod columns, else name and age).

use std::sync::Arc;

use http::HeaderMap;
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::resources::ResourceInfo;
use crate::store::Store;

/// Whether the client asked for a Table (kubectl sends `application/json;as=Table;...`).
pub fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.contains("as=Table")))
}

struct Column {
    name: String,
    type_: String,
    priority: i64,
    description: String,
    /// A JSONPath, or a built-in cell.
    source: Source,
}

enum Source {
    Path(String),
    Name,
    Age,
    PodReady,
    PodStatus,
    PodRestarts,
    PodIp,
    EventLastSeen,
    EventObject,
}

fn column(name: &str, type_: &str, source: Source) -> Column {
    Column {
        name: name.into(),
        type_: type_.into(),
        priority: 0,
        description: String::new(),
        source,
    }
}

/// The columns of a resource.
fn columns(store: &Store, info: &ResourceInfo) -> Vec<Column> {
    let mut columns = vec![column("Name", "string", Source::Name)];
    if let Some(crd_name) = &info.crd {
        let printer = store
            .registry()
            .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .and_then(|crd_info| store.get(&crd_info.key(), "", crd_name))
            .and_then(|crd| {
                crd["spec"]["versions"]
                    .as_array()?
                    .iter()
                    .find(|v| v["name"] == info.version.as_str())
                    .and_then(|v| v["additionalPrinterColumns"].as_array().cloned())
            });
        match printer {
            Some(defs) => {
                for def in defs {
                    columns.push(Column {
                        name: def["name"].as_str().unwrap_or_default().into(),
                        type_: def["type"].as_str().unwrap_or("string").into(),
                        priority: def["priority"].as_i64().unwrap_or(0),
                        description: def["description"].as_str().unwrap_or_default().into(),
                        source: Source::Path(def["jsonPath"].as_str().unwrap_or_default().into()),
                    });
                }
            }
            None => columns.push(column("Age", "date", Source::Age)),
        }
        return columns;
    }
    if info.group.is_empty() && info.plural == "pods" {
        columns.push(column("Ready", "string", Source::PodReady));
        columns.push(column("Status", "string", Source::PodStatus));
        columns.push(column("Restarts", "integer", Source::PodRestarts));
        columns.push(column("Age", "string", Source::Age));
        columns.push(Column {
            priority: 1,
            ..column("IP", "string", Source::PodIp)
        });
        return columns;
    }
    if info.plural == "events" && matches!(info.group.as_str(), "" | "events.k8s.io") {
        // The API server's event columns, which `kubectl get events` prints: no Name.
        return vec![
            column("Last Seen", "string", Source::EventLastSeen),
            column("Type", "string", Source::Path(".type".into())),
            column("Reason", "string", Source::Path(".reason".into())),
            column("Object", "string", Source::EventObject),
            column("Message", "string", Source::Path(".message".into())),
        ];
    }
    columns.push(column("Age", "string", Source::Age));
    columns
}

/// Renders objects as a Table.
pub fn render(
    store: &Store,
    info: &ResourceInfo,
    resource_version: u64,
    items: &[Arc<Value>],
) -> Value {
    let columns = columns(store, info);
    let now = Timestamp::now();
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let cells: Vec<Value> = columns.iter().map(|c| cell(c, obj, now)).collect();
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"].clone(),
                }
            })
        })
        .collect();
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": if c.type_ == "date" { "string" } else { c.type_.as_str() },
                "format": if matches!(c.source, Source::Name) { "name" } else { "" },
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

fn cell(column: &Column, obj: &Value, now: Timestamp) -> Value {
    match &column.source {
        Source::Name => obj["metadata"]["name"].clone(),
        Source::Age => age(&obj["metadata"]["creationTimestamp"], now),
        Source::Path(path) => {
            let value = evaluate(obj, path).unwrap_or(Value::Null);
            // Like the API server: dates become ages, other values print as they are.
            if column.type_ == "date" {
                age(&value, now)
            } else {
                value
            }
        }
        Source::PodReady => {
            let statuses = obj["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let containers = obj["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready_condition = obj["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            let ready = if statuses.is_empty() {
                if ready_condition { containers } else { 0 }
            } else {
                statuses.iter().filter(|s| s["ready"] == true).count()
            };
            Value::String(format!("{ready}/{}", containers.max(statuses.len())))
        }
        Source::PodStatus => {
            if obj["metadata"]["deletionTimestamp"].is_string() {
                Value::String("Terminating".into())
            } else {
                obj["status"]["phase"].clone()
            }
        }
        Source::PodRestarts => json!(obj["status"]["containerStatuses"].as_array().map_or(
            0,
            |s| {
                s.iter()
                    .filter_map(|c| c["restartCount"].as_i64())
                    .sum::<i64>()
            }
        )),
        Source::PodIp => obj["status"]["podIP"].clone(),
        // Stored in the core shape (the events.k8s.io view is converted on read).
        Source::EventLastSeen => {
            let last = &obj["lastTimestamp"];
            if last.is_string() {
                age(last, now)
            } else {
                age(&obj["eventTime"], now)
            }
        }
        Source::EventObject => {
            let involved = &obj["involvedObject"];
            Value::String(format!(
                "{}/{}",
                involved["kind"].as_str().unwrap_or_default().to_lowercase(),
                involved["name"].as_str().unwrap_or_default()
            ))
        }
    }
}

/// kubectl's short ages: 45s, 3m12s, 5h, 2d.
fn age(value: &Value, now: Timestamp) -> Value {
    let Some(at) = value.as_str().and_then(|s| s.parse::<Timestamp>().ok()) else {
        return Value::String("<unknown>".into());
    };
    let secs = now.duration_since(at).as_secs().max(0);
    let text = match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    };
    Value::String(text)
}

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `.a[0]`, `.a[*]` and
/// `.a[?(@.k=="v")]` filters. Several matches print comma-separated, like the API server.
pub fn evaluate(obj: &Value, path: &str) -> Option<Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut current: Vec<&Value> = vec![obj];
    let mut rest = path.trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let key = &after[..end];
            current = current.iter().filter_map(|v| v.get(key)).collect();
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let selector = &after[..end];
            rest = &after[end + 1..];
            current = select(current, selector)?;
        } else {
            return None;
        }
    }
    match current.as_slice() {
        [] => None,
        [one] => Some((*one).clone()),
        many => Some(Value::String(
            many.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
        )),
    }
}

fn select<'a>(current: Vec<&'a Value>, selector: &str) -> Option<Vec<&'a Value>> {
    let items = current.into_iter().filter_map(Value::as_array).flatten();
    if selector == "*" {
        return Some(items.collect());
    }
    if let Ok(index) = selector.parse::<usize>() {
        return Some(
            items
                .enumerate()
                .filter(|(i, _)| *i == index)
                .map(|(_, v)| v)
                .collect(),
        );
    }
    // ?(@.key=="value"), ?(@.key==value)
    let filter = selector
        .strip_prefix("?(")?
        .strip_suffix(')')?
        .strip_prefix("@.")?;
    let (key, expected) = filter.split_once("==")?;
    let expected = expected.trim().trim_matches(|c| c == '"' || c == '\'');
    Some(
        items
            .filter(|item| {
                let actual = &item[key.trim()];
                actual
                    .as_str()
                    .map_or_else(|| actual.to_string(), str::to_string)
                    == expected
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_cells_read_like_the_api_servers_printer() {
        let now: Timestamp = "2026-11-25T10:00:30Z".parse().unwrap();
        let event = json!({
            "type": "Normal", "reason": "PodEjected", "message": "pod web-1 ejected",
            "involvedObject": {"kind": "Pod", "name": "web-1"},
            "eventTime": "2026-11-25T10:00:00.000000Z",
        });
        let cell = |source| cell(&column("x", "string", source), &event, now);
        assert_eq!(cell(Source::EventLastSeen), json!("30s"));
        assert_eq!(cell(Source::EventObject), json!("pod/web-1"));
        assert_eq!(cell(Source::Path(".reason".into())), json!("PodEjected"));
    }

    #[test]
    fn evaluates_paths_indexes_and_filters() {
        let obj = json!({
            "spec": {"service": "web"},
            "status": {"conditions": [
                {"type": "Other", "reason": "X"},
                {"type": "Ready", "reason": "Running"}
            ], "podCount": {"nbPodsManaged": 5}}
        });
        assert_eq!(evaluate(&obj, ".spec.service"), Some(json!("web")));
        assert_eq!(
            evaluate(&obj, ".status.podCount.nbPodsManaged"),
            Some(json!(5))
        );
        assert_eq!(
            evaluate(&obj, ".status.conditions[?(@.type==\"Ready\")].reason"),
            Some(json!("Running"))
        );
        assert_eq!(
            evaluate(&obj, ".status.conditions[0].type"),
            Some(json!("Other"))
        );
        assert_eq!(
            evaluate(&obj, ".status.conditions[*].reason"),
            Some(json!("X,Running"))
        );
        assert_eq!(evaluate(&obj, ".status.missing"), None);
        assert_eq!(evaluate(&obj, "{.spec.service}"), Some(json!("web")));
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        assert_eq!(age(&json!("2026-01-01T23:59:15Z"), now), json!("45s"));
        assert_eq!(age(&json!("2026-01-01T23:55:00Z"), now), json!("5m0s"));
        assert_eq!(age(&json!("2026-01-01T20:00:00Z"), now), json!("4h"));
        assert_eq!(age(&json!("2025-12-20T00:00:00Z"), now), json!("13d"));
        assert_eq!(age(&Value::Null, now), json!("<unknown>"));
    }

    #[test]
    fn accept_header_with_as_table_asks_for_a_table() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
                .parse()
                .unwrap(),
        );
        assert!(wanted(&headers));
        assert!(!wanted(&HeaderMap::new()));
    }
}
