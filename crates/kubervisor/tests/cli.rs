//! The `kubervisor` binary's offline commands, run as a user would.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn kubervisor(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubervisor"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubervisor runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn crd_prints_a_v1_crd_with_the_approval_annotation() {
    let out = kubervisor(&["crd"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let crd: serde_json::Value = serde_saphyr::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(crd["apiVersion"], "apiextensions.k8s.io/v1");
    assert_eq!(crd["kind"], "CustomResourceDefinition");
    assert_eq!(
        crd["metadata"]["name"],
        "kubervisorservices.kubervisor.k8s.io"
    );
    let approval = crd["metadata"]["annotations"]["api-approved.kubernetes.io"]
        .as_str()
        .unwrap();
    assert!(approval.starts_with("unapproved, "));
}

const VALID: &str = "apiVersion: kubervisor.k8s.io/v1alpha1
kind: KubervisorService
metadata: {name: web, namespace: shop}
spec:
  service: web
  breakers:
  - name: faulty
    customService: detector.shop:8080
";

#[test]
fn check_prints_the_defaulted_object_and_exits_zero() {
    let out = kubervisor(&["check", "-f", "-"], VALID);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let object: serde_json::Value = serde_saphyr::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(object["spec"]["breakers"][0]["evaluationPeriod"], 5.0);
    assert_eq!(object["spec"]["defaultActivator"]["mode"], "periodic");
    assert_eq!(object["spec"]["dryRun"], false);
}

#[test]
fn check_reports_every_error_with_its_path_and_exits_two() {
    let invalid = VALID
        .replace("name: faulty", "name: Faulty")
        .replace("service: web", "service: ''");
    let out = kubervisor(&["check", "-f", "-"], &invalid);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("KubervisorService shop/web: spec.service: required"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "KubervisorService shop/web: spec.breakers[0].name: \"Faulty\" is not a DNS-1035 label"
        ),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn check_rejects_malformed_yaml_and_missing_files_in_one_line() {
    let out = kubervisor(&["check", "-f", "-"], "spec: {service: [\n");
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: -: invalid YAML: "), "{stderr}");

    let out = kubervisor(&["check", "-f", "/nonexistent/kvs.yaml"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("error: /nonexistent/kvs.yaml: cannot read: "));
}

#[test]
fn check_reads_several_files_and_notes_other_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("a.yaml");
    let second = dir.path().join("b.yaml");
    std::fs::write(
        &first,
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n---\n{VALID}"),
    )
    .unwrap();
    std::fs::write(&second, VALID.replace("name: web,", "name: api,")).unwrap();
    let out = kubervisor(
        &[
            "check",
            "-f",
            first.to_str().unwrap(),
            "-f",
            second.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.matches("kind: KubervisorService").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("\n---\n"));
    assert!(text(&out.stderr).contains("skipping v1/Service web: not a KubervisorService"));
}
