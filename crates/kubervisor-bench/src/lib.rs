//! Kubervisor's benchmark driver: kubesim with a generated fleet, the operator as a separate
//! process, and a custom detector served here, so every figure is measured, not guessed.
//!
//! Scenarios: [`reaction`], [`scale`], [`decide`], [`backtest`], [`soak`]. Each returns one JSON object.

pub mod backtest;
pub mod cluster;
pub mod decide;
pub mod detector;
pub mod operator;
pub mod reaction;
pub mod scale;
pub mod soak;
pub mod stats;

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::stats::Summary;

/// What every scenario that runs the operator needs.
pub struct Env {
    pub operator_bin: PathBuf,
    /// Kubeconfigs and the operator's logs.
    pub dir: tempfile::TempDir,
}

/// One line of a human-readable table of durations.
pub fn table_row(name: &str, s: &Summary) -> String {
    format!(
        "{name:<44} {:>9.1} {:>9.1} {:>9.1} {:>9}",
        s.p50_ms, s.p99_ms, s.max_ms, s.count
    )
}

/// The machine the figures come from: cores, memory, CPU model, kernel.
pub fn machine() -> Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": stats::round(mem_kib as f64 / 1024.0 / 1024.0),
        "cpu": model,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}
