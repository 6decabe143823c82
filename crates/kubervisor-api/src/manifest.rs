//! Reading KubervisorService manifests the way `kubectl apply` would have them checked:
//! YAML syntax, field types, unknown fields (against the CRD's own schema) and the
//! semantic rules of [`KubervisorServiceSpec::resolve`](crate::KubervisorServiceSpec::resolve).

use serde_json::Value;

use crate::validate::FieldError;
use crate::{API_VERSION, KIND, KubervisorService};

/// A manifest that cannot be read at all.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct YamlError(String);

/// One document of a manifest file, as read.
#[derive(Debug)]
pub enum Document {
    /// A KubervisorService that passed every check, with defaults applied.
    Valid(Box<KubervisorService>),
    /// A KubervisorService with every problem found, each naming its field path.
    Invalid {
        name: String,
        errors: Vec<FieldError>,
    },
    /// Another kind of object (a Service beside its KubervisorService, say).
    Other { kind: String, name: String },
}

/// Parses every document of a YAML (or JSON) stream and checks each KubervisorService.
pub fn check_documents(text: &str) -> Result<Vec<Document>, YamlError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        // The parser's message is followed by a source snippet; its first line says it all.
        let message = e.to_string();
        let first = message.lines().next().unwrap_or_default();
        YamlError(first.trim_start_matches("error: ").to_string())
    })?;
    Ok(docs
        .into_iter()
        .filter(|doc| !doc.is_null())
        .enumerate()
        .map(|(i, doc)| check_document(i, doc))
        .collect())
}

/// Parses one KubervisorService from a JSON value, checking types, unknown fields and rules.
pub fn check_document(index: usize, doc: Value) -> Document {
    let name = display_name(index, &doc);
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind != KIND {
        if kind.is_empty() {
            return Document::Invalid {
                name,
                errors: vec![field("kind", "required")],
            };
        }
        return Document::Other {
            kind: format!("{api_version}/{kind}"),
            name,
        };
    }
    if api_version != API_VERSION {
        return Document::Invalid {
            name,
            errors: vec![field(
                "apiVersion",
                format!("must be {API_VERSION}, got {api_version:?}"),
            )],
        };
    }
    let mut errors = unknown_fields(&doc);
    let object: KubervisorService = match serde_path_to_error::deserialize(&doc) {
        Ok(object) => object,
        Err(e) => {
            errors.push(field(
                &e.path().to_string(),
                one_line(&e.inner().to_string()),
            ));
            return Document::Invalid { name, errors };
        }
    };
    match object.spec.resolve() {
        Err(invalid) => errors.extend(invalid.0),
        Ok(_) if errors.is_empty() => {
            let mut object = object;
            object.spec = object.spec.defaulted();
            return Document::Valid(Box::new(object));
        }
        Ok(_) => {}
    }
    Document::Invalid { name, errors }
}

fn display_name(index: usize, doc: &Value) -> String {
    let meta = &doc["metadata"];
    match (meta["namespace"].as_str(), meta["name"].as_str()) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_string(),
        _ => format!("document {}", index + 1),
    }
}

fn field(path: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.to_string(),
        message: message.into(),
    }
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Fields the CRD schema does not declare, which a real API server would prune or,
/// with strict field validation, reject.
fn unknown_fields(doc: &Value) -> Vec<FieldError> {
    // The schema is generated once per process, not once per document.
    static CRD: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let crd = CRD.get_or_init(|| serde_json::to_value(crate::crd()).expect("CRD serialises"));
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut found = Vec::new();
    let Value::Object(top) = doc else {
        return found;
    };
    for (key, value) in top {
        match key.as_str() {
            // Standard object fields are the API server's, not the CRD schema's.
            "apiVersion" | "kind" | "metadata" => {}
            _ => match schema["properties"].get(key) {
                Some(sub_schema) => walk(sub_schema, value, key, &mut found),
                None => found.push(field(key, "unknown field")),
            },
        }
    }
    found
}

fn walk(schema: &Value, value: &Value, path: &str, found: &mut Vec<FieldError>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let Some(Value::Object(props)) = schema.get("properties") else {
                return;
            };
            for (key, sub) in map {
                let sub_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match props.get(key) {
                    Some(sub_schema) => walk(sub_schema, sub, &sub_path, found),
                    None => found.push(field(&sub_path, "unknown field")),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), found);
                }
            }
        }
        _ => {}
    }
}
