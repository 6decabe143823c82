//! `kubervisor demo` runs to its summary and exits 0, with Prometheus and without it.

use std::process::Command;

fn run_demo(path: Option<&str>) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubervisor"));
    command.args(["demo", "--no-tui"]).env_remove("RUST_LOG");
    if let Some(path) = path {
        command.env("PATH", path);
    }
    let out = command.output().expect("kubervisor demo runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The number after `label` in the demo's closing summary.
fn figure(stdout: &str, label: &str) -> f64 {
    let summary = &stdout[stdout
        .rfind("\nSummary (")
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"))..];
    let at = summary
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} not in the output:\n{stdout}"));
    let rest = &summary[at + label.len()..];
    let number: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?}:\n{stdout}"))
}

fn check_summary(stdout: &str) {
    assert!(figure(stdout, "pods ejected") >= 2.0, "{stdout}");
    assert!(figure(stdout, "re-activated") >= 1.0, "{stdout}");
    assert_eq!(figure(stdout, "paused"), 1.0, "{stdout}");
    let during = figure(stdout, "during");
    let after = figure(stdout, "after");
    assert_eq!(figure(stdout, "before"), 100.0, "{stdout}");
    assert!(
        during < 100.0,
        "the failing pods cost some requests: {stdout}"
    );
    assert!(
        after > during && after >= 99.0,
        "the Service recovered: {stdout}"
    );
    assert!(
        stdout.contains("decision: "),
        "decisions are printed as they happen:\n{stdout}"
    );
}

#[test]
fn demo_with_prometheus_ends_with_a_summary() {
    let (ok, stdout, stderr) = run_demo(None);
    assert!(ok, "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("Summary (Prometheus at http://127.0.0.1:"),
        "{stdout}\n{stderr}"
    );
    check_summary(&stdout);
}

#[test]
fn demo_without_prometheus_falls_back_to_a_custom_detector_and_says_so() {
    // An empty PATH hides the prometheus binary; the demo needs nothing else.
    let (ok, stdout, stderr) = run_demo(Some(""));
    assert!(ok, "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("Prometheus is not installed (apt-get install prometheus)"),
        "{stdout}"
    );
    assert!(stdout.contains("Summary (custom detector"), "{stdout}");
    check_summary(&stdout);
}
