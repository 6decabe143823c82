//! Resources served as a second view of another resource's objects. On a real API
//! server `events.k8s.io/v1` Events are core `v1` Events in another shape: one object,
//! stored once, converted per API version on every read, list and watch. kubesim stores
//! the core shape (the storage version upstream) and converts here.

use crate::resources::ResKey;
use serde_json::{Map, Value};

/// A resource whose objects are stored as another resource's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// `events.k8s.io/v1` Events over core `v1` Events.
    EventsV1,
}

/// (core v1 field, events.k8s.io/v1 field) pairs that differ only by name, as upstream's
/// conversion (`Convert_core_Event_To_v1_Event` and back) maps them. Every other field
/// (`metadata`, `eventTime`, `series`, `related`, `action`, `reason`, `type`,
/// `reportingInstance`) has the same name and shape in both.
const EVENT_RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    // The core JSON name of the internal ReportingController field.
    ("reportingComponent", "reportingController"),
];

impl View {
    /// The view a served resource is, if it is one.
    pub fn of(group: &str, plural: &str) -> Option<View> {
        (group == "events.k8s.io" && plural == "events").then_some(View::EventsV1)
    }

    /// Where the objects live.
    pub fn storage_key(self) -> ResKey {
        match self {
            View::EventsV1 => ResKey::new("", "events"),
        }
    }

    /// The (group, version, plural) of the stored resource.
    pub fn storage_resource(self) -> (&'static str, &'static str, &'static str) {
        match self {
            View::EventsV1 => ("", "v1", "events"),
        }
    }

    /// A stored object as this view shows it.
    pub fn to_view(self, stored: &Value) -> Value {
        match self {
            View::EventsV1 => {
                let mut shown = rename(stored, EVENT_RENAMES.iter().copied(), "events.k8s.io/v1");
                // omitempty in events.k8s.io/v1, not in core v1.
                if let Some(o) = shown.as_object_mut() {
                    for field in ["reportingController", "reportingInstance"] {
                        if o.get(field).is_some_and(|v| *v == "") {
                            o.remove(field);
                        }
                    }
                }
                shown
            }
        }
    }

    /// An object written through this view, in the stored shape.
    pub fn to_storage(self, obj: &Value) -> Value {
        match self {
            View::EventsV1 => rename(obj, EVENT_RENAMES.iter().map(|(c, e)| (*e, *c)), "v1"),
        }
    }

    /// What upstream's `ValidateEventCreate` requires of an Event created through
    /// `events.k8s.io/v1` (core `v1` creates are validated leniently, for old clients):
    /// the new fields set, the deprecated ones unset. The errors, joined as upstream does.
    pub fn validate_create(self, obj: &Value) -> Result<(), String> {
        let View::EventsV1 = self;
        let set = |field: &str| obj.get(field).is_some_and(|v| !v.is_null() && *v != "");
        let mut errors = Vec::new();
        if !set("eventTime") {
            errors.push("eventTime: Required value".to_string());
        }
        for field in [
            "reportingController",
            "reportingInstance",
            "action",
            "reason",
        ] {
            if !set(field) {
                errors.push(format!("{field}: Required value"));
            }
        }
        match obj.get("type").and_then(Value::as_str) {
            Some("Normal" | "Warning") => {}
            other => errors.push(format!(
                "type: Invalid value: \"\": has invalid value: {}",
                other.unwrap_or_default()
            )),
        }
        for field in ["deprecatedFirstTimestamp", "deprecatedLastTimestamp"] {
            if set(field) {
                errors.push(format!("{field}: Invalid value: \"\": needs to be unset"));
            }
        }
        if obj
            .get("deprecatedCount")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            != 0
        {
            errors.push("deprecatedCount: Invalid value: \"\": needs to be unset".into());
        }
        if obj.get("deprecatedSource").is_some_and(|s| {
            ["component", "host"]
                .iter()
                .any(|f| s.get(f).is_some_and(|v| *v != ""))
        }) {
            errors.push("deprecatedSource: Invalid value: \"\": needs to be unset".into());
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(format!("[{}]", errors.join(", "))),
        }
    }

    /// A field selector path of this view as a path of the stored object
    /// (`regarding.name` selects `involvedObject.name`).
    pub fn storage_field(self, first_segment: &str) -> &str {
        match self {
            View::EventsV1 => EVENT_RENAMES
                .iter()
                .find(|(_, e)| *e == first_segment)
                .map_or(first_segment, |(c, _)| c),
        }
    }
}

/// Renames top-level fields. A field already bearing a target name is dropped first: it
/// has no meaning in the source shape, so it must not shadow the converted one (the real
/// server drops unknown fields the same way).
fn rename<'a>(
    obj: &Value,
    pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    api_version: &str,
) -> Value {
    let Some(src) = obj.as_object() else {
        return obj.clone();
    };
    let mut out: Map<String, Value> = src
        .iter()
        .filter(|(k, _)| !pairs.clone().any(|(_, to)| to == k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (from, to) in pairs {
        if let Some(v) = out.remove(from) {
            out.insert(to.to_string(), v);
        }
    }
    if out.contains_key("apiVersion") || src.contains_key("kind") {
        out.insert("apiVersion".into(), Value::String(api_version.to_string()));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::View;
    use serde_json::json;

    #[test]
    fn an_events_k8s_io_create_needs_the_new_fields_and_none_of_the_deprecated_ones() {
        let valid = json!({"eventTime": "2025-03-01T10:00:00.000000Z", "type": "Normal",
            "reason": "R", "action": "A", "reportingController": "c", "reportingInstance": "i"});
        assert_eq!(View::EventsV1.validate_create(&valid), Ok(()));
        let mut deprecated = valid.clone();
        deprecated["deprecatedCount"] = json!(2);
        let err = View::EventsV1.validate_create(&deprecated).unwrap_err();
        assert!(err.contains("deprecatedCount"), "{err}");
        let err = View::EventsV1
            .validate_create(&json!({"type": "Normal"}))
            .unwrap_err();
        assert!(err.starts_with("[eventTime: Required value, "), "{err}");
    }

    #[test]
    fn events_convert_both_ways_with_upstream_field_names() {
        let core = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "default", "uid": "u1"},
            "message": "ejected", "reason": "PodEjected", "type": "Warning", "action": "Eject",
            "source": {"component": "kubervisor", "host": "node-1"},
            "firstTimestamp": "2025-01-01T00:00:00Z", "lastTimestamp": "2025-01-01T00:01:00Z",
            "count": 3, "eventTime": "2025-01-01T00:00:00.000001Z",
            "series": {"count": 2, "lastObservedTime": "2025-01-01T00:01:00.000000Z"},
            "related": {"kind": "Service", "name": "web"},
            "reportingComponent": "kubervisor", "reportingInstance": "kubervisor-0",
        });
        let events = View::EventsV1.to_view(&core);
        assert_eq!(
            events,
            json!({
                "apiVersion": "events.k8s.io/v1", "kind": "Event",
                "metadata": {"name": "e", "namespace": "default"},
                "regarding": {"kind": "Pod", "name": "web-1", "namespace": "default", "uid": "u1"},
                "note": "ejected", "reason": "PodEjected", "type": "Warning", "action": "Eject",
                "deprecatedSource": {"component": "kubervisor", "host": "node-1"},
                "deprecatedFirstTimestamp": "2025-01-01T00:00:00Z",
                "deprecatedLastTimestamp": "2025-01-01T00:01:00Z",
                "deprecatedCount": 3, "eventTime": "2025-01-01T00:00:00.000001Z",
                "series": {"count": 2, "lastObservedTime": "2025-01-01T00:01:00.000000Z"},
                "related": {"kind": "Service", "name": "web"},
                "reportingController": "kubervisor", "reportingInstance": "kubervisor-0",
            })
        );
        assert_eq!(View::EventsV1.to_storage(&events), core);
    }

    #[test]
    fn names_of_the_other_shape_do_not_shadow_converted_fields() {
        let written = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "note": "real", "message": "not an events.k8s.io field"});
        assert_eq!(
            View::EventsV1.to_storage(&written),
            json!({"apiVersion": "v1", "kind": "Event", "message": "real"})
        );
        assert_eq!(View::EventsV1.storage_field("regarding"), "involvedObject");
        assert_eq!(View::EventsV1.storage_field("metadata"), "metadata");
    }
}
