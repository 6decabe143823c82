//! The README's `cargo install --path crates/kubectl-kubervisor`: the package installs
//! one executable, `kubectl-kubervisor`, which kubectl lists as a plugin and runs as
//! `kubectl kubervisor` once it is on PATH. (Running `cargo install` itself here would
//! build the plugin again with other features and environment in the shared target
//! directory, under the feet of the tests running the binary.)

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::harness::{PLUGIN, require_kubectl};

#[test]
fn the_package_installs_one_executable_that_kubectl_runs_as_a_plugin() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO"))
        .current_dir(&repo)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = repo
        .join("crates/kubectl-kubervisor/Cargo.toml")
        .canonicalize()
        .unwrap();
    let package = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
        .expect("a package at crates/kubectl-kubervisor");
    let executables: Vec<&str> = package["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(executables, ["kubectl-kubervisor"]);

    // What `cargo install` does with it: the executable alone in a directory on PATH.
    let home = tempfile::tempdir().unwrap();
    let bin = home.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(PLUGIN, bin.join("kubectl-kubervisor")).unwrap();
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let kubectl = |args: &[&str]| {
        Command::new(require_kubectl())
            .args(args)
            .env("PATH", &path)
            .env("HOME", home.path())
            .output()
            .expect("kubectl runs")
    };
    let list = kubectl(&["plugin", "list"]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains(&bin.join("kubectl-kubervisor").display().to_string()),
        "kubectl plugin list: {listed}{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let help = kubectl(&["kubervisor", "--help"]);
    assert!(
        help.status.success() && String::from_utf8_lossy(&help.stdout).contains("eject"),
        "kubectl kubervisor --help: {}{}",
        String::from_utf8_lossy(&help.stdout),
        String::from_utf8_lossy(&help.stderr)
    );
}
