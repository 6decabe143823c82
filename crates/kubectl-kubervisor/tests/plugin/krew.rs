//! The krew plugin manifest, `plugins/kubervisor.yaml`: every field krew's own validation
//! requires (apiVersion and kind, a safe name matching the file, a one-line short
//! description, a `v`-prefixed semantic version, and per platform a selector on `os` and
//! `arch` only, a URI, a 64-hex sha256, `bin` and well-formed `files`), this crate's
//! version, and archives built by `scripts/krew-manifest.sh` that match the checksum the
//! manifest states and hold the executable it names.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::PLUGIN;

const API_VERSION: &str = "krew.googlecontainertools.github.com/v1alpha2";
/// Names krew refuses because Windows cannot create files with them.
const WINDOWS_RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn read_manifest(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn committed() -> Value {
    read_manifest(&repo().join("plugins/kubervisor.yaml"))
}

/// `vMAJOR.MINOR.PATCH[-PRE][+BUILD]`, numbers without leading zeros: what krew parses.
fn is_krew_version(version: &str) -> bool {
    let Some(rest) = version.strip_prefix('v') else {
        return false;
    };
    let (rest, build) = rest.split_once('+').unwrap_or((rest, ""));
    let (core, pre) = rest.split_once('-').unwrap_or((rest, ""));
    let identifiers_ok = |s: &str| {
        s.split('.')
            .all(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    };
    let numbers: Vec<&str> = core.split('.').collect();
    numbers.len() == 3
        && numbers.iter().all(|n| {
            !n.is_empty()
                && n.chars().all(|c| c.is_ascii_digit())
                && (n.len() == 1 || !n.starts_with('0'))
        })
        && (pre.is_empty() && !rest.ends_with('-') || identifiers_ok(pre))
        && (build.is_empty() && !version.ends_with('+') || identifiers_ok(build))
}

fn text<'a>(value: &'a Value, field: &str, errors: &mut Vec<String>) -> &'a str {
    match value.as_str() {
        Some(s) if !s.trim().is_empty() => s,
        _ => {
            errors.push(format!("{field}: required, a non-empty string"));
            ""
        }
    }
}

/// Every way `manifest` (the file `file_name`) breaks krew's rules or the project's, each
/// naming its field.
fn manifest_errors(manifest: &Value, file_name: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if manifest["apiVersion"] != API_VERSION {
        errors.push(format!("apiVersion: must be {API_VERSION}"));
    }
    if manifest["kind"] != "Plugin" {
        errors.push("kind: must be Plugin".into());
    }
    let name = text(&manifest["metadata"]["name"], "metadata.name", &mut errors);
    let safe = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !WINDOWS_RESERVED
            .iter()
            .any(|r| r.eq_ignore_ascii_case(name));
    if !safe {
        errors.push(format!("metadata.name: {name:?} must be letters, digits, _ and -, and not a reserved Windows name"));
    }
    if file_name != format!("{name}.yaml") {
        errors.push(format!(
            "metadata.name: {name:?} must match the file name {file_name}"
        ));
    }
    let spec = &manifest["spec"];
    let short = text(
        &spec["shortDescription"],
        "spec.shortDescription",
        &mut errors,
    );
    if short.contains(['\r', '\n']) {
        errors.push("spec.shortDescription: must be one line".into());
    }
    text(&spec["description"], "spec.description", &mut errors);
    let homepage = text(&spec["homepage"], "spec.homepage", &mut errors);
    let version = text(&spec["version"], "spec.version", &mut errors);
    if !is_krew_version(version) {
        errors.push(format!(
            "spec.version: {version:?} is not v-prefixed semantic version"
        ));
    }
    let crate_version = format!("v{}", env!("CARGO_PKG_VERSION"));
    if version != crate_version {
        errors.push(format!(
            "spec.version: {version} is not the plugin crate's {crate_version}"
        ));
    }
    let platforms = spec["platforms"].as_array().cloned().unwrap_or_default();
    if platforms.is_empty() {
        errors.push("spec.platforms: at least one platform".into());
    }
    let mut seen = Vec::new();
    for (i, platform) in platforms.iter().enumerate() {
        let at = format!("spec.platforms[{i}]");
        let uri = text(&platform["uri"], &format!("{at}.uri"), &mut errors);
        let sha = text(&platform["sha256"], &format!("{at}.sha256"), &mut errors);
        if sha.len() != 64
            || !sha
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            errors.push(format!(
                "{at}.sha256: {sha:?} must be 64 lowercase hex digits"
            ));
        }
        let bin = text(&platform["bin"], &format!("{at}.bin"), &mut errors);
        if bin.starts_with('/') || bin.split('/').any(|part| part == "..") {
            errors.push(format!(
                "{at}.bin: {bin:?} must be a path inside the installation"
            ));
        }
        match &platform["files"] {
            Value::Null => {}
            Value::Array(files) if !files.is_empty() => {
                for (j, file) in files.iter().enumerate() {
                    text(&file["from"], &format!("{at}.files[{j}].from"), &mut errors);
                    text(&file["to"], &format!("{at}.files[{j}].to"), &mut errors);
                }
            }
            _ => errors.push(format!("{at}.files: absent or a non-empty list")),
        }
        let selector = &platform["selector"];
        let labels = selector["matchLabels"].as_object();
        let expressions = selector["matchExpressions"].as_array();
        if labels.is_none_or(|l| l.is_empty()) && expressions.is_none_or(|e| e.is_empty()) {
            errors.push(format!(
                "{at}.selector: matchLabels or matchExpressions, not empty"
            ));
        }
        let keys = labels.into_iter().flat_map(|l| l.keys().cloned()).chain(
            expressions
                .into_iter()
                .flatten()
                .map(|e| e["key"].as_str().unwrap_or_default().to_string()),
        );
        for key in keys {
            if key != "os" && key != "arch" {
                errors.push(format!("{at}.selector: key {key:?} is neither os nor arch"));
            }
        }
        let (os, arch) = (
            &selector["matchLabels"]["os"],
            &selector["matchLabels"]["arch"],
        );
        let (os, arch) = (
            os.as_str().unwrap_or_default(),
            arch.as_str().unwrap_or_default(),
        );
        if seen.contains(&(os, arch)) {
            errors.push(format!("{at}.selector: a second platform for {os}/{arch}"));
        }
        seen.push((os, arch));
        let expected_uri = format!(
            "{homepage}/releases/download/{version}/kubectl-kubervisor-{version}-{os}-{arch}.tar.gz"
        );
        if uri != expected_uri {
            errors.push(format!(
                "{at}.uri: {uri:?} is not the release URL {expected_uri:?}"
            ));
        }
    }
    errors
}

#[test]
fn the_committed_manifest_has_every_field_krew_requires() {
    let manifest = committed();
    let errors = manifest_errors(&manifest, "kubervisor.yaml");
    assert!(
        errors.is_empty(),
        "plugins/kubervisor.yaml:\n  {}",
        errors.join("\n  ")
    );
    let platforms = manifest["spec"]["platforms"].as_array().unwrap();
    assert!(
        platforms
            .iter()
            .any(|p| p["selector"]["matchLabels"] == json!({"os": "linux", "arch": "amd64"})),
        "no linux/amd64 build: {platforms:?}"
    );
}

#[test]
fn each_broken_field_is_named() {
    type Break = fn(&mut Value);
    let cases: &[(Break, &str)] = &[
        (
            |m| m["apiVersion"] = json!("krew.googlecontainertools.github.com/v1alpha1"),
            "apiVersion",
        ),
        (|m| m["kind"] = json!("Plugins"), "kind"),
        (
            |m| m["metadata"]["name"] = json!("kube visor"),
            "metadata.name",
        ),
        (|m| m["metadata"]["name"] = json!("kv"), "metadata.name"),
        (|m| m["spec"]["version"] = json!("0.1.0"), "spec.version"),
        (|m| m["spec"]["version"] = json!("v0.1"), "spec.version"),
        (|m| m["spec"]["version"] = json!("v0.01.0"), "spec.version"),
        (|m| m["spec"]["version"] = json!("v99.0.0"), "spec.version"),
        (
            |m| m["spec"]["shortDescription"] = json!("two\nlines"),
            "spec.shortDescription",
        ),
        (
            |m| m["spec"]["shortDescription"] = Value::Null,
            "spec.shortDescription",
        ),
        (
            |m| m["spec"]["description"] = Value::Null,
            "spec.description",
        ),
        (|m| m["spec"]["homepage"] = Value::Null, "spec.homepage"),
        (|m| m["spec"]["platforms"] = json!([]), "spec.platforms"),
        (
            |m| m["spec"]["platforms"][0]["sha256"] = json!("ABC"),
            "spec.platforms[0].sha256",
        ),
        (
            |m| m["spec"]["platforms"][0]["sha256"] = Value::Null,
            "spec.platforms[0].sha256",
        ),
        (
            |m| m["spec"]["platforms"][0]["uri"] = Value::Null,
            "spec.platforms[0].uri",
        ),
        (
            |m| m["spec"]["platforms"][0]["uri"] = json!("https://example.com/k.tar.gz"),
            "spec.platforms[0].uri",
        ),
        (
            |m| m["spec"]["platforms"][0]["bin"] = Value::Null,
            "spec.platforms[0].bin",
        ),
        (
            |m| m["spec"]["platforms"][0]["bin"] = json!("../kubectl"),
            "spec.platforms[0].bin",
        ),
        (
            |m| m["spec"]["platforms"][0]["files"] = json!([]),
            "spec.platforms[0].files",
        ),
        (
            |m| m["spec"]["platforms"][0]["files"][0]["to"] = Value::Null,
            "spec.platforms[0].files[0].to",
        ),
        (
            |m| m["spec"]["platforms"][0]["selector"] = json!({}),
            "spec.platforms[0].selector",
        ),
        (
            |m| m["spec"]["platforms"][0]["selector"]["matchLabels"]["distro"] = json!("debian"),
            "spec.platforms[0].selector",
        ),
        (
            |m| {
                let first = m["spec"]["platforms"][0].clone();
                m["spec"]["platforms"].as_array_mut().unwrap().push(first);
            },
            "spec.platforms[1].selector",
        ),
    ];
    for (break_it, field) in cases {
        let mut manifest = committed();
        break_it(&mut manifest);
        let errors = manifest_errors(&manifest, "kubervisor.yaml");
        assert!(
            errors.iter().any(|e| e.starts_with(field)),
            "breaking {field} is not reported: {errors:?}"
        );
    }
}

fn sha256_of(file: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .expect("sha256sum runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn run_script(binary: &str, dir: &Path, manifest: &str) -> Value {
    let out = Command::new("bash")
        .arg(repo().join("scripts/krew-manifest.sh"))
        .args(["--binary", binary, "--dist"])
        .arg(dir)
        .arg("--manifest")
        .arg(dir.join(manifest))
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "scripts/krew-manifest.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    read_manifest(&dir.join(manifest))
}

#[test]
fn the_script_packages_the_plugin_with_the_checksum_and_executable_it_states() {
    let dir = tempfile::tempdir().unwrap();
    let written = run_script(PLUGIN, dir.path(), "kubervisor.yaml");
    let errors = manifest_errors(&written, "kubervisor.yaml");
    assert!(
        errors.is_empty(),
        "the script's manifest:\n  {}",
        errors.join("\n  ")
    );

    let platform = &written["spec"]["platforms"][0];
    let uri = platform["uri"].as_str().unwrap();
    let archive = dir.path().join(uri.rsplit('/').next().unwrap());
    assert_eq!(
        sha256_of(&archive),
        platform["sha256"].as_str().unwrap(),
        "{} does not have the manifest's sha256",
        archive.display()
    );
    // Unpacked as krew does, the files it copies and the executable it links are there.
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let tar = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .expect("tar runs");
    assert!(tar.success());
    for file in platform["files"].as_array().unwrap() {
        let from = file["from"].as_str().unwrap();
        assert!(
            unpacked.join(from).is_file(),
            "{from} is not in {}",
            archive.display()
        );
    }
    let bin = unpacked.join(platform["bin"].as_str().unwrap());
    let help = Command::new(&bin)
        .arg("--help")
        .output()
        .expect("the packed plugin runs");
    assert!(
        help.status.success(),
        "{}",
        String::from_utf8_lossy(&help.stderr)
    );

    // The same binary gives the same archive, so a checksum can be checked by rebuilding.
    let again = run_script(PLUGIN, dir.path(), "again.yaml");
    assert_eq!(again["spec"]["platforms"][0]["sha256"], platform["sha256"]);

    // The committed manifest is the script's output, up to the checksums of its binaries
    // (and the platforms a release machine could build besides this one).
    let committed = committed();
    let without_platforms = |manifest: &Value| {
        let mut manifest = manifest.clone();
        manifest["spec"]["platforms"] = Value::Null;
        manifest
    };
    let stale = "plugins/kubervisor.yaml differs from what scripts/krew-manifest.sh writes: run it";
    assert_eq!(
        without_platforms(&written),
        without_platforms(&committed),
        "{stale}"
    );
    for mut platform in written["spec"]["platforms"].as_array().unwrap().clone() {
        let mut same = committed["spec"]["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["selector"] == platform["selector"])
            .unwrap_or_else(|| panic!("{stale}: no platform {}", platform["selector"]))
            .clone();
        platform["sha256"] = Value::Null;
        same["sha256"] = Value::Null;
        assert_eq!(platform, same, "{stale}");
    }
    let committed_text = std::fs::read_to_string(repo().join("plugins/kubervisor.yaml")).unwrap();
    assert!(
        committed_text.starts_with("# krew plugin manifest, written by scripts/krew-manifest.sh")
    );
}
