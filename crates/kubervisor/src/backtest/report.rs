//! The backtest's output: a timeline and summary for people, JSON lines for programs, and
//! two policies side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use jiff::Timestamp;
use serde::Serialize;

use super::replay::Action;
use super::{Backtest, CAVEAT};

/// The numbers of one backtest.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub resource: String,
    pub file: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub evaluations: u64,
    pub evaluations_by_breaker: BTreeMap<String, u64>,
    pub ejections: usize,
    pub distinct_pods_ejected: usize,
    pub activations: usize,
    pub pauses: usize,
    pub kills: usize,
    /// Anomalous pods kept in traffic by the floor.
    pub spared: usize,
    pub panics: usize,
    /// Pods that appeared in the data (or `--fleet-size`).
    pub pods: usize,
    pub max_pods_out: usize,
    pub max_pods_out_at: Option<Timestamp>,
    pub min_pods_with_traffic: usize,
    /// The floor at the instant of the fewest pods with traffic.
    pub floor: usize,
    pub min_pods_with_traffic_at: Option<Timestamp>,
    /// Per pod, the seconds spent without traffic.
    pub time_out_seconds: BTreeMap<String, f64>,
    pub not_replayable: Vec<NotReplayableEntry>,
    pub caveat: &'static str,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NotReplayableEntry {
    pub breaker: String,
    pub reason: String,
}

impl Summary {
    pub fn of(backtest: &Backtest) -> Summary {
        let replayed = &backtest.replayed;
        let count = |action: Action| {
            replayed
                .decisions
                .iter()
                .filter(|d| d.action == action)
                .count()
        };
        let ejected: BTreeSet<&str> = replayed
            .decisions
            .iter()
            .filter(|d| d.action == Action::Eject)
            .filter_map(|d| d.pod.as_deref())
            .collect();
        let (min_with_traffic, floor, min_at) = match replayed.min_with_traffic {
            Some((min, floor, at)) => (min, floor, Some(at)),
            None => (0, 0, None),
        };
        Summary {
            resource: backtest.resource.clone(),
            file: backtest.label.clone(),
            start: backtest.start,
            end: backtest.end,
            evaluations: replayed.evaluations.values().sum(),
            evaluations_by_breaker: replayed.evaluations.clone(),
            ejections: count(Action::Eject),
            distinct_pods_ejected: ejected.len(),
            activations: count(Action::Activate),
            pauses: count(Action::Pause),
            kills: count(Action::Kill),
            spared: count(Action::Spare),
            panics: replayed
                .decisions
                .iter()
                .filter(|d| d.action == Action::Panic && d.reason.contains(" in panic"))
                .count(),
            pods: replayed.out.len(),
            max_pods_out: replayed.max_out.0,
            max_pods_out_at: replayed.max_out.1,
            min_pods_with_traffic: min_with_traffic,
            floor,
            min_pods_with_traffic_at: min_at,
            time_out_seconds: replayed
                .out
                .iter()
                .map(|(pod, intervals)| {
                    let seconds = intervals
                        .iter()
                        .map(|(from, to)| to.duration_since(*from).as_secs_f64())
                        .sum();
                    (pod.clone(), seconds)
                })
                .collect(),
            not_replayable: backtest
                .not_replayable
                .iter()
                .map(|n| NotReplayableEntry {
                    breaker: n.breaker.clone(),
                    reason: n.reason.clone(),
                })
                .collect(),
            caveat: CAVEAT,
        }
    }
}

/// One JSON object per decision, then `{"summary": {...}}`, one per line.
pub fn json_lines(backtest: &Backtest) -> String {
    let mut out = String::new();
    for decision in &backtest.replayed.decisions {
        let line = serde_json::json!({
            "time": decision.time,
            "breaker": decision.breaker,
            "pod": decision.pod,
            "action": decision.action,
            "reason": decision.reason,
        });
        let _ = writeln!(out, "{line}");
    }
    let summary = serde_json::json!({ "summary": Summary::of(backtest) });
    let _ = writeln!(out, "{summary}");
    out
}

/// Two backtests' summaries side by side, as one JSON line.
pub fn json_compare(a: &Backtest, b: &Backtest) -> String {
    let line = serde_json::json!({
        "compare": [Summary::of(a), Summary::of(b)],
    });
    format!("{line}\n")
}

/// Whole seconds as `1h02m05s`, `3m20s` or `45s`; fractions of a second when under one.
pub fn duration(seconds: f64) -> String {
    if seconds < 1.0 && seconds > 0.0 {
        return format!("{seconds:.3}s");
    }
    let total = seconds.round() as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// The readable timeline and summary.
pub fn text(backtest: &Backtest) -> String {
    let summary = Summary::of(backtest);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Backtest of {} ({}) from {} to {}",
        backtest.resource, backtest.label, backtest.start, backtest.end
    );
    for breaker in &backtest.breakers {
        let _ = writeln!(
            out,
            "  breaker {}: {} every {}, {} evaluations",
            breaker.name,
            breaker.detector,
            duration(breaker.evaluation_period.as_secs_f64()),
            summary
                .evaluations_by_breaker
                .get(&breaker.name)
                .copied()
                .unwrap_or(0)
        );
    }
    for n in &backtest.not_replayable {
        let _ = writeln!(out, "  breaker {}: not replayable: {}", n.breaker, n.reason);
    }
    let _ = writeln!(out, "Caveat: {CAVEAT}.");
    let _ = writeln!(out);
    let _ = writeln!(out, "Timeline");
    if backtest.replayed.decisions.is_empty() {
        let _ = writeln!(out, "  no decision");
    }
    let pod_width = backtest
        .replayed
        .decisions
        .iter()
        .map(|d| d.pod.as_deref().map_or(1, str::len))
        .max()
        .unwrap_or(1);
    for d in &backtest.replayed.decisions {
        let _ = writeln!(
            out,
            "  {}  {:<8}  {:<pod_width$}  {}",
            d.time,
            d.action.as_str(),
            d.pod.as_deref().unwrap_or("-"),
            d.reason
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Summary");
    for (name, value) in summary_rows(&summary) {
        let _ = writeln!(out, "  {name:<28} {value}");
    }
    out
}

/// The summary as (row name, value) pairs, shared by text, comparison and HTML.
pub fn summary_rows(s: &Summary) -> Vec<(String, String)> {
    let at = |t: Option<Timestamp>| t.map(|t| format!(" at {t}")).unwrap_or_default();
    let mut rows = vec![
        ("evaluations".to_string(), s.evaluations.to_string()),
        ("pods".to_string(), s.pods.to_string()),
        ("ejections".to_string(), s.ejections.to_string()),
        (
            "distinct pods ejected".to_string(),
            s.distinct_pods_ejected.to_string(),
        ),
        ("activations".to_string(), s.activations.to_string()),
        ("pauses".to_string(), s.pauses.to_string()),
        ("kills".to_string(), s.kills.to_string()),
        ("spared by the floor".to_string(), s.spared.to_string()),
        ("panics".to_string(), s.panics.to_string()),
        (
            "most pods out at once".to_string(),
            format!("{}{}", s.max_pods_out, at(s.max_pods_out_at)),
        ),
        (
            "fewest pods with traffic".to_string(),
            format!(
                "{} (floor {}){}",
                s.min_pods_with_traffic,
                s.floor,
                at(s.min_pods_with_traffic_at)
            ),
        ),
        (
            "time out of traffic".to_string(),
            duration(s.time_out_seconds.values().sum()),
        ),
    ];
    for (pod, seconds) in &s.time_out_seconds {
        if *seconds > 0.0 {
            rows.push((format!("  {pod}"), duration(*seconds)));
        }
    }
    rows
}

/// Two policies over the same history, side by side.
pub fn compare_text(a: &Backtest, b: &Backtest) -> String {
    let (sa, sb) = (Summary::of(a), Summary::of(b));
    let rows_a = summary_rows(&sa);
    let rows_b = summary_rows(&sb);
    let short = |s: &Summary, rows: &[(String, String)], name: &str| -> String {
        rows.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| {
                // A pod out under one policy and never under the other.
                if s.time_out_seconds.contains_key(name.trim()) {
                    "0s".into()
                } else {
                    "-".into()
                }
            })
    };
    let mut names: Vec<String> = rows_a.iter().map(|(n, _)| n.clone()).collect();
    for (n, _) in &rows_b {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    // Times of the extremes differ between policies; the comparison keeps the counts.
    let strip = |v: String| match v.split_once(" at ") {
        Some((value, _)) => value.to_string(),
        None => v,
    };
    let width = a.label.len().max(16);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Same history, two policies: {} from {} to {}",
        a.resource, a.start, a.end
    );
    let _ = writeln!(out, "Caveat: {CAVEAT}.");
    let _ = writeln!(out);
    let _ = writeln!(out, "  {:<28} {:<width$}  {}", "", a.label, b.label);
    for name in names {
        let va = strip(short(&sa, &rows_a, &name));
        let vb = strip(short(&sb, &rows_b, &name));
        let _ = writeln!(out, "  {name:<28} {va:<width$}  {vb}");
    }
    out
}
