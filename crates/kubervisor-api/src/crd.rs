use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::KubervisorService;

/// `metadata.name` of the CRD.
pub const CRD_NAME: &str = "kubervisorservices.kubervisor.k8s.io";

/// The CustomResourceDefinition, generated from the Rust types so the schema never drifts.
pub fn crd() -> CustomResourceDefinition {
    KubervisorService::crd()
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
