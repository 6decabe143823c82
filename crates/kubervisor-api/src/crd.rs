use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{Value, json};

use crate::KubervisorService;

/// `metadata.name` of the CRD.
pub const CRD_NAME: &str = "kubervisorservices.kubervisor.k8s.io";

/// The CustomResourceDefinition, generated from the Rust types so the schema never drifts,
/// with the rules the API server can check at admission (bounds, required strings, names,
/// and CEL `x-kubernetes-validations` for the rules that span fields), so that
/// `kubectl apply` refuses most invalid resources with the field named. The operator's
/// own validation stays the complete check (older servers, kubesim).
pub fn crd() -> CustomResourceDefinition {
    let mut crd = serde_json::to_value(KubervisorService::crd()).expect("a CRD serialises");
    let spec = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    admission_rules(spec);
    serde_json::from_value(crd).expect("the CRD with its admission rules deserialises")
}

/// Breakers of one resource at most: bounds the cost of the admission rules.
pub const MAX_BREAKERS: usize = 32;
/// DNS-1035 label, as breaker names and Service names are.
const DNS_1035: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";
/// The detection methods, in the order their fields appear in messages.
const METHODS: [&str; 7] = [
    "discreteValueOutOfList",
    "continuousValueDeviation",
    "customService",
    "valueThreshold",
    "valueTrend",
    "successRateOutlier",
    "continuousOutlier",
];

fn rule(rule: &str, message: &str) -> Value {
    json!({"rule": rule, "message": message})
}

/// Adds `extra` to the schema object at `path` (dotted property names).
fn extend(schema: &mut Value, path: &str, extra: Value) {
    let at = at(schema, path);
    assert!(
        at.is_object() && at.get("type").is_some(),
        "no schema at {path}: the CRD's rules are out of step with the types"
    );
    for (key, value) in extra.as_object().expect("an object").clone() {
        at[key] = value;
    }
}

/// The schema object at `path` (dotted property names, `[]` for a list's items).
fn at<'a>(schema: &'a mut Value, path: &str) -> &'a mut Value {
    let mut at = schema;
    for name in path.split('.').filter(|n| !n.is_empty()) {
        at = if name == "[]" {
            &mut at["items"]
        } else {
            &mut at["properties"][name]
        };
    }
    at
}

/// Makes `field` of the object at `parent` required, with `extra` rules: its schema default
/// (`""` or `[]`, from the types' serde defaults) goes, since a default must itself be valid.
fn require(schema: &mut Value, parent: &str, field: &str, extra: Value) {
    let path = format!("{parent}.{field}");
    extend(schema, &path, extra);
    at(schema, &path)
        .as_object_mut()
        .expect("an object")
        .remove("default");
    let required = at(schema, parent)
        .as_object_mut()
        .expect("an object")
        .entry("required")
        .or_insert_with(|| json!([]));
    let list = required.as_array_mut().expect("a list");
    if !list.iter().any(|f| f == field) {
        list.push(json!(field));
    }
}

fn admission_rules(spec: &mut Value) {
    let exclusive_min = |min: f64| json!({"minimum": min, "exclusiveMinimum": true});
    let percent = json!({"minimum": 0, "maximum": 100});
    let name_rules = json!({"minLength": 1, "maxLength": 63, "pattern": DNS_1035});
    require(spec, "", "service", name_rules.clone());
    require(
        spec,
        "",
        "breakers",
        json!({"minItems": 1, "maxItems": MAX_BREAKERS, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
    );
    let breaker = "breakers.[]";
    let one_method = format!(
        "{} == 1",
        METHODS
            .map(|m| format!("(has(self.{m}) ? 1 : 0)"))
            .join(" + ")
    );
    extend(
        spec,
        breaker,
        json!({"x-kubernetes-validations": [rule(
            &one_method,
            &format!("exactly one detection method per breaker: {}", METHODS.join(", ")),
        )]}),
    );
    require(spec, breaker, "name", name_rules);
    extend(
        spec,
        &format!("{breaker}.evaluationPeriod"),
        json!({"minimum": 0.01, "exclusiveMinimum": true, "maximum": 86400}),
    );
    extend(
        spec,
        &format!("{breaker}.minPodsAvailableRatio"),
        percent.clone(),
    );
    extend(
        spec,
        &format!("{breaker}.panicThresholdPercent"),
        percent.clone(),
    );
    extend(
        spec,
        &format!("{breaker}.maxEjectionsPerEvaluation"),
        json!({"minimum": 1}),
    );
    for method in [
        "discreteValueOutOfList",
        "continuousValueDeviation",
        "valueThreshold",
        "valueTrend",
        "successRateOutlier",
        "continuousOutlier",
    ] {
        for field in ["prometheusService", "promQL", "podNamekey"] {
            require(
                spec,
                &format!("{breaker}.{method}"),
                field,
                json!({"minLength": 1}),
            );
        }
    }
    let good_xor_bad = rule(
        "(has(self.goodValues) && size(self.goodValues) > 0) != (has(self.badValues) && size(self.badValues) > 0)",
        "exactly one of goodValues and badValues must be non-empty",
    );
    for method in ["discreteValueOutOfList", "successRateOutlier"] {
        require(
            spec,
            &format!("{breaker}.{method}"),
            "key",
            json!({"minLength": 1}),
        );
        extend(
            spec,
            &format!("{breaker}.{method}"),
            json!({"x-kubernetes-validations": [good_xor_bad.clone()]}),
        );
    }
    extend(
        spec,
        &format!("{breaker}.discreteValueOutOfList.tolerance"),
        percent,
    );
    extend(
        spec,
        &format!("{breaker}.continuousValueDeviation.maxDeviationPercent"),
        exclusive_min(0.0),
    );
    extend(
        spec,
        &format!("{breaker}.valueThreshold"),
        json!({"x-kubernetes-validations": [
            rule("has(self.above) || has(self.below)", "at least one of above, below"),
            rule("!has(self.above) || !has(self.below) || self.below < self.above", "below must be less than above"),
        ]}),
    );
    extend(
        spec,
        &format!("{breaker}.valueTrend"),
        json!({"x-kubernetes-validations": [
            rule("has(self.maxSlope) || has(self.minSlope)", "at least one of maxSlope, minSlope"),
            rule("!has(self.maxSlope) || !has(self.minSlope) || self.minSlope < self.maxSlope", "minSlope must be less than maxSlope"),
        ]}),
    );
    extend(
        spec,
        &format!("{breaker}.valueTrend.window"),
        json!({"minimum": 0, "exclusiveMinimum": true, "maximum": 604800}),
    );
    extend(
        spec,
        &format!("{breaker}.successRateOutlier.stdevFactor"),
        exclusive_min(0.0),
    );
    extend(
        spec,
        &format!("{breaker}.successRateOutlier.minimumHosts"),
        json!({"minimum": 1}),
    );
    extend(
        spec,
        &format!("{breaker}.continuousOutlier.maxZScore"),
        exclusive_min(0.0),
    );
    extend(
        spec,
        &format!("{breaker}.continuousOutlier.minDeviationPercent"),
        json!({"minimum": 0}),
    );
    extend(
        spec,
        &format!("{breaker}.continuousOutlier.minimumHosts"),
        json!({"minimum": 1}),
    );
    for activator in ["defaultActivator", &format!("{breaker}.activator")] {
        extend(
            spec,
            &format!("{activator}.period"),
            json!({"minimum": 0, "exclusiveMinimum": true, "maximum": 31536000}),
        );
        for field in ["forgetAfter", "maxEjectionTime"] {
            extend(spec, &format!("{activator}.{field}"), exclusive_min(0.0));
        }
    }
}

/// The CRD as a YAML document, ready for `kubectl apply -f -`.
pub fn crd_yaml() -> String {
    serde_saphyr::to_string(&crd()).expect("a CRD always serialises to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn crd_json() -> Value {
        serde_json::to_value(crd()).unwrap()
    }

    #[test]
    fn crd_names_and_scope_match_the_original_resource() {
        let crd = crd();
        assert_eq!(crd.metadata.name.as_deref(), Some(CRD_NAME));
        assert_eq!(crd.spec.group, "kubervisor.k8s.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "KubervisorService");
        assert_eq!(crd.spec.names.plural, "kubervisorservices");
        assert_eq!(crd.spec.names.short_names, Some(vec!["kvs".to_string()]));
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
    }

    #[test]
    fn crd_carries_the_api_approval_annotation_protected_groups_require() {
        let annotations = crd().metadata.annotations.unwrap_or_default();
        let value = annotations
            .get("api-approved.kubernetes.io")
            .expect("annotation present");
        assert!(value.starts_with("unapproved, "), "{value}");
    }

    #[test]
    fn crd_has_status_subresource_and_printer_columns() {
        let json = crd_json();
        let version = &json["spec"]["versions"][0];
        assert_eq!(version["subresources"]["status"], serde_json::json!({}));
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            ["Service", "State", "Managed", "Broken", "Paused", "Age"]
        );
    }

    /// The API server rejects non-structural schemas: every node needs a type, and
    /// `properties` may not sit beside `additionalProperties`, `anyOf` or `$ref`.
    fn assert_structural(path: &str, schema: &Value) {
        let obj = schema.as_object().expect("schema node is an object");
        for banned in ["$ref", "definitions", "$defs", "$schema"] {
            assert!(!obj.contains_key(banned), "{path}: has {banned}");
        }
        let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        assert!(
            obj.contains_key("type") || preserve || int_or_string,
            "{path}: node without type: {schema}"
        );
        if let Some(Value::Object(props)) = obj.get("properties") {
            assert!(
                !obj.contains_key("additionalProperties"),
                "{path}: properties and additionalProperties together"
            );
            for (name, sub) in props {
                assert_structural(&format!("{path}.{name}"), sub);
            }
        }
        if let Some(items) = obj.get("items") {
            assert_structural(&format!("{path}[]"), items);
        }
        if let Some(Value::Object(_)) = obj.get("additionalProperties") {
            assert_structural(&format!("{path}{{}}"), &obj["additionalProperties"]);
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            if let Some(Value::Array(alts)) = obj.get(key) {
                for alt in alts {
                    // Inside junctors, only value validations are allowed: no types, no defaults.
                    let alt = alt.as_object().unwrap();
                    assert!(!alt.contains_key("type"), "{path}: {key} with type");
                    assert!(!alt.contains_key("default"), "{path}: {key} with default");
                }
            }
        }
        if let Some(Value::Array(values)) = obj.get("enum") {
            assert!(!values.is_empty(), "{path}: empty enum");
        }
    }

    #[test]
    fn crd_schema_is_structural() {
        let json = crd_json();
        let schema = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        assert_structural("", schema);
        let spec = &schema["properties"]["spec"]["properties"];
        let breaker = &spec["breakers"]["items"]["properties"];
        for field in [
            "name",
            "evaluationPeriod",
            "minPodsAvailableCount",
            "minPodsAvailableRatio",
            "discreteValueOutOfList",
            "continuousValueDeviation",
            "customService",
            "activator",
        ] {
            assert!(breaker.get(field).is_some(), "breakers[].{field} in schema");
        }
        let discrete = &breaker["discreteValueOutOfList"]["properties"];
        for field in [
            "prometheusService",
            "promQL",
            "key",
            "podNamekey",
            "goodValues",
            "badValues",
            "tolerance",
            "minActivity",
        ] {
            assert!(discrete.get(field).is_some(), "discrete {field} in schema");
        }
        let mode = &spec["defaultActivator"]["properties"]["mode"];
        assert_eq!(
            mode["enum"],
            serde_json::json!(["periodic", "retryAndKill", "retryAndPause"])
        );
    }

    #[test]
    fn crd_yaml_round_trips() {
        let yaml = crd_yaml();
        let back: CustomResourceDefinition = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, crd());
        assert!(
            yaml.contains("apiVersion: apiextensions.k8s.io/v1"),
            "{yaml}"
        );
    }
}
