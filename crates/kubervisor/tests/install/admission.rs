//! Validation at admission: the CRD's schema and CEL rules make the real API server refuse
//! invalid KubervisorServices at `kubectl apply`, naming the field, as `kubervisor check`
//! does offline; and every example is accepted.

use std::process::{Command, Stdio};

use kubesim::testing::{Backend, RealNamespace};
use serde_json::{Value, json};

use crate::tools::*;

fn manifest(spec: Value) -> Value {
    json!({"apiVersion": "kubervisor.k8s.io/v1alpha1", "kind": "KubervisorService",
           "metadata": {"name": "web"}, "spec": spec})
}

fn custom(extra: Value) -> Value {
    let mut breaker = json!({"name": "errors", "customService": "detector:8080"});
    for (k, v) in extra.as_object().unwrap() {
        breaker[k] = v.clone();
    }
    breaker
}

fn prometheus(method: &str, fields: Value) -> Value {
    let mut detector =
        json!({"prometheusService": "prometheus:9090", "promQL": "up", "podNamekey": "pod"});
    for (k, v) in fields.as_object().unwrap() {
        detector[k] = v.clone();
    }
    json!({"name": "errors", method: detector})
}

/// (what, spec, a piece of the API server's message naming the field)
fn invalid_cases() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "no service",
            json!({"breakers": [custom(json!({}))]}),
            "spec.service",
        ),
        (
            "no breaker",
            json!({"service": "web", "breakers": []}),
            "spec.breakers",
        ),
        (
            "a breaker without a method",
            json!({"service": "web", "breakers": [{"name": "errors"}]}),
            "exactly one detection method per breaker",
        ),
        (
            "a breaker with two methods",
            json!({"service": "web", "breakers": [{"name": "errors", "customService": "d:1",
                "valueThreshold": {"prometheusService": "p:9090", "promQL": "up", "podNamekey": "pod", "above": 1}}]}),
            "exactly one detection method per breaker",
        ),
        (
            "an invalid breaker name",
            json!({"service": "web", "breakers": [custom(json!({"name": "Bad_Name"}))]}),
            "spec.breakers[0].name",
        ),
        (
            "two breakers of one name",
            json!({"service": "web", "breakers": [custom(json!({})), custom(json!({}))]}),
            "Duplicate value",
        ),
        (
            "a ratio above 100",
            json!({"service": "web", "breakers": [custom(json!({"minPodsAvailableRatio": 150}))]}),
            "spec.breakers[0].minPodsAvailableRatio",
        ),
        (
            "a panic threshold above 100",
            json!({"service": "web", "breakers": [custom(json!({"panicThresholdPercent": 101}))]}),
            "spec.breakers[0].panicThresholdPercent",
        ),
        (
            "no ejection allowed",
            json!({"service": "web", "breakers": [custom(json!({"maxEjectionsPerEvaluation": 0}))]}),
            "spec.breakers[0].maxEjectionsPerEvaluation",
        ),
        (
            "a zero evaluation period",
            json!({"service": "web", "breakers": [custom(json!({"evaluationPeriod": 0}))]}),
            "spec.breakers[0].evaluationPeriod",
        ),
        (
            "good and bad values",
            json!({"service": "web", "breakers": [prometheus("discreteValueOutOfList", json!({"key": "code", "goodValues": ["200"], "badValues": ["500"]}))]}),
            "exactly one of goodValues and badValues",
        ),
        (
            "a tolerance above 100",
            json!({"service": "web", "breakers": [prometheus("discreteValueOutOfList", json!({"key": "code", "goodValues": ["200"], "tolerance": 120}))]}),
            "spec.breakers[0].discreteValueOutOfList.tolerance",
        ),
        (
            "a threshold without bounds",
            json!({"service": "web", "breakers": [prometheus("valueThreshold", json!({}))]}),
            "at least one of above, below",
        ),
        (
            "a query without PromQL",
            json!({"service": "web", "breakers": [prometheus("valueThreshold", json!({"promQL": "", "above": 1}))]}),
            "spec.breakers[0].valueThreshold.promQL",
        ),
        (
            "a negative activator period",
            json!({"service": "web", "breakers": [custom(json!({}))], "defaultActivator": {"period": -1}}),
            "spec.defaultActivator.period",
        ),
        (
            "an unknown kill method",
            json!({"service": "web", "breakers": [custom(json!({}))], "defaultActivator": {"killMethod": "shoot"}}),
            "spec.defaultActivator.killMethod",
        ),
    ]
}

fn run_with_stdin(program: &str, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn kubervisor_check_refuses_every_case_too() {
    for (what, spec, _) in invalid_cases() {
        let out = run_with_stdin(
            env!("CARGO_BIN_EXE_kubervisor"),
            &["check", "-f", "-"],
            &manifest(spec).to_string(),
        );
        assert!(!out.status.success(), "kubervisor check accepted {what}");
    }
}

#[tokio::test]
async fn the_real_api_server_refuses_invalid_resources_naming_the_field() {
    let Some(Backend::Real(admin)) = Backend::real() else {
        return;
    };
    install_crd(&admin).await;
    let namespace = RealNamespace::create(&admin, "admission").await;
    let kubeconfig = admin.display().to_string();
    let apply = |document: String| {
        run_with_stdin(
            "kubectl",
            &[
                "--kubeconfig",
                &kubeconfig,
                "-n",
                &namespace.name,
                "apply",
                "--dry-run=server",
                "-f",
                "-",
            ],
            &document,
        )
    };
    let mut wrong = Vec::new();
    for (what, spec, field) in invalid_cases() {
        let out = apply(manifest(spec).to_string());
        let stderr = text(&out.stderr);
        if out.status.success() || !stderr.contains(field) {
            wrong.push(format!(
                "{what}: expected a refusal naming {field:?}, got {:?} {stderr}",
                out.status.code()
            ));
        }
    }
    // Every example is accepted as written.
    let mut examples: Vec<_> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    for example in examples {
        let kvs: Vec<Value> =
            serde_saphyr::from_multiple::<Value>(&std::fs::read_to_string(&example).unwrap())
                .unwrap()
                .into_iter()
                .filter(|d| d["kind"] == "KubervisorService")
                .collect();
        let out = apply(kvs[0].to_string());
        if !out.status.success() {
            wrong.push(format!(
                "{} refused: {}",
                example.display(),
                text(&out.stderr)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
