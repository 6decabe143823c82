//! `kubervisor backtest`: what a KubervisorService would have done over past Prometheus data.
//!
//! Each replayable breaker's query is run once over the range (range queries with
//! step = `evaluationPeriod`, paged; a `valueTrend`'s from one window earlier at its own
//! step), then the operator's own step, [`crate::plan::plan`],
//! runs over the simulated fleet with the clock set to each evaluation instant and to each
//! time the activator is due. Nothing is written anywhere: the result is a list of
//! decisions and a summary.

pub mod command;
pub mod detector;
pub mod history;
pub mod html;
pub mod replay;
pub mod report;

use std::path::{Path, PathBuf};

use jiff::{SignedDuration, Timestamp};
use kubervisor_api::manifest::{Document, check_documents};
use kubervisor_api::{KubervisorService, ResolvedSpec};

pub use detector::NotReplayable;
use detector::replayable;
pub use history::History;
pub use replay::{Action, BreakerHistory, Decision, Replayed};

use crate::source::{SourceError, Sources};

/// What a backtest cannot start or finish without.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("invalid {field} `{value}`: {reason}")]
    Time {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid range: {0}")]
    Range(String),
    #[error("{path}: cannot read: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: invalid YAML: {reason}")]
    Yaml { path: String, reason: String },
    #[error("{path}: KubervisorService {name}: {errors}")]
    InvalidSpec {
        path: String,
        name: String,
        errors: String,
    },
    #[error("{path}: no KubervisorService in the file")]
    NoResource { path: String },
    #[error("{path}: {count} KubervisorServices in the file ({names}); backtest one per file")]
    SeveralResources {
        path: String,
        count: usize,
        names: String,
    },
    #[error("--breaker {name}: no such breaker; the resource has {known}")]
    UnknownBreaker { name: String, known: String },
    #[error("--fleet-size {given}: fewer than the {seen} pods found in the data")]
    FleetSize { given: usize, seen: usize },
    #[error("no breaker can be replayed: {0}")]
    NothingReplayable(String),
    #[error("breaker {breaker}: {source}")]
    Source {
        breaker: String,
        #[source]
        source: Box<SourceError>,
    },
    #[error("breaker {breaker}: {reason}")]
    Query { breaker: String, reason: String },
    #[error("{0}")]
    Settings(Box<SourceError>),
    #[error("{path}: cannot write the report: {reason}")]
    Report { path: String, reason: String },
}

impl BacktestError {
    /// Whether the user's input is at fault (exit code 2) rather than the data source.
    pub fn is_invalid_input(&self) -> bool {
        !matches!(
            self,
            BacktestError::Source { .. }
                | BacktestError::Query { .. }
                | BacktestError::Report { .. }
        )
    }
}

/// Reads `now`, `-6h`, `now-30m`, `-1h30m` (relative to `now`) or an RFC 3339 time.
pub fn parse_time(
    field: &'static str,
    text: &str,
    now: Timestamp,
) -> Result<Timestamp, BacktestError> {
    let error = |reason: String| BacktestError::Time {
        field,
        value: text.to_string(),
        reason,
    };
    let trimmed = text.trim();
    if trimmed == "now" {
        return Ok(now);
    }
    if let Some(ago) = trimmed
        .strip_prefix("now-")
        .or_else(|| trimmed.strip_prefix('-'))
    {
        let ago: SignedDuration = ago
            .parse()
            .map_err(|e| error(format!("not a duration such as -6h, -30m or -1h30m ({e})")))?;
        if ago.is_negative() {
            return Err(error("a relative time counts back from now".into()));
        }
        return now
            .checked_sub(ago)
            .map_err(|e| error(format!("out of range: {e}")));
    }
    trimmed.parse::<Timestamp>().map_err(|e| {
        error(format!(
            "neither an RFC 3339 time (2026-11-25T10:00:00Z) nor a relative one (-6h, now) ({e})"
        ))
    })
}

/// A KubervisorService read from a file, validated, with defaults applied.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The file it came from, to label output.
    pub label: String,
    pub kvs: KubervisorService,
    pub spec: ResolvedSpec,
}

impl Policy {
    /// Reads the one KubervisorService of a manifest file, the way `kubervisor check` does.
    pub fn load(path: &Path) -> Result<Policy, BacktestError> {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| BacktestError::Read {
            path: label.clone(),
            reason: e.to_string(),
        })?;
        Policy::parse(&label, &text)
    }

    pub fn parse(label: &str, text: &str) -> Result<Policy, BacktestError> {
        let documents = check_documents(text).map_err(|e| BacktestError::Yaml {
            path: label.to_string(),
            reason: e.to_string(),
        })?;
        let mut found = Vec::new();
        for document in documents {
            match document {
                Document::Valid(kvs) => found.push(*kvs),
                Document::Invalid { name, errors } => {
                    let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                    return Err(BacktestError::InvalidSpec {
                        path: label.to_string(),
                        name,
                        errors: errors.join("; "),
                    });
                }
                Document::Other { .. } => {}
            }
        }
        let kvs = match found.len() {
            0 => {
                return Err(BacktestError::NoResource {
                    path: label.to_string(),
                });
            }
            1 => found.remove(0),
            count => {
                let names: Vec<String> = found
                    .iter()
                    .map(|k| k.metadata.name.clone().unwrap_or_default())
                    .collect();
                return Err(BacktestError::SeveralResources {
                    path: label.to_string(),
                    count,
                    names: names.join(", "),
                });
            }
        };
        let spec = kvs.spec.resolve().map_err(|e| BacktestError::InvalidSpec {
            path: label.to_string(),
            name: kvs.metadata.name.clone().unwrap_or_default(),
            errors: e.to_string(),
        })?;
        Ok(Policy {
            label: label.to_string(),
            kvs,
            spec,
        })
    }
}

/// What to replay.
#[derive(Clone, Debug)]
pub struct Options {
    /// Prometheus to query instead of each breaker's `prometheusService`.
    pub prometheus: Option<String>,
    pub start: Timestamp,
    pub end: Timestamp,
    /// Replay only this breaker.
    pub breaker: Option<String>,
    /// The number of pods, when some never report.
    pub fleet_size: Option<usize>,
    /// Keep each pod's detector quantity at each evaluation, for the HTML report.
    pub charts: bool,
}

/// One replayed breaker, as reported.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerInfo {
    pub name: String,
    pub detector: &'static str,
    pub evaluation_period: std::time::Duration,
    pub quantity_name: &'static str,
    /// The quantity's fixed bounds; none when the bound moves with the fleet.
    pub thresholds: Vec<f64>,
}

/// The result of one backtest.
#[derive(Clone, Debug, PartialEq)]
pub struct Backtest {
    pub label: String,
    pub resource: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub breakers: Vec<BreakerInfo>,
    pub not_replayable: Vec<NotReplayable>,
    pub replayed: Replayed,
}

/// The counterfactual caveat every output states.
pub const CAVEAT: &str = "history was recorded with every pod serving: an ejected pod's later samples are what it did while serving, not what it would have done out of traffic; a killed pod is not replaced";

/// The breakers to replay and those that cannot be, after `--breaker`.
pub struct Plan {
    pub spec: ResolvedSpec,
    pub detectors: Vec<(String, Box<dyn detector::Replayable>)>,
    pub not_replayable: Vec<NotReplayable>,
}

impl Plan {
    pub fn new(policy: &Policy, only: Option<&str>) -> Result<Plan, BacktestError> {
        let mut spec = policy.spec.clone();
        if let Some(name) = only {
            if !spec.breakers.iter().any(|b| b.name == name) {
                let known: Vec<&str> = spec.breakers.iter().map(|b| b.name.as_str()).collect();
                return Err(BacktestError::UnknownBreaker {
                    name: name.to_string(),
                    known: if known.is_empty() {
                        "no breakers".into()
                    } else {
                        format!("breakers {}", known.join(", "))
                    },
                });
            }
            spec.breakers.retain(|b| b.name == name);
        }
        // The backtest shows what the policy would do enforced, dry run or not.
        spec.dry_run = false;
        let mut detectors = Vec::new();
        let mut not_replayable = Vec::new();
        for breaker in &mut spec.breakers {
            breaker.dry_run = false;
            match replayable(breaker) {
                Ok(detector) => detectors.push((breaker.name.clone(), detector)),
                Err(why) => not_replayable.push(why),
            }
        }
        spec.breakers
            .retain(|b| detectors.iter().any(|(name, _)| *name == b.name));
        if detectors.is_empty() {
            let reasons: Vec<String> = not_replayable
                .iter()
                .map(|n| format!("breaker {}: {}", n.breaker, n.reason))
                .collect();
            return Err(BacktestError::NothingReplayable(if reasons.is_empty() {
                "the resource has no breakers".into()
            } else {
                reasons.join("; ")
            }));
        }
        Ok(Plan {
            spec,
            detectors,
            not_replayable,
        })
    }

    /// Fetches every replayable breaker's history.
    pub async fn fetch(
        self,
        sources: &Sources,
        options: &Options,
    ) -> Result<(ResolvedSpec, Vec<BreakerHistory>, Vec<NotReplayable>), BacktestError> {
        let mut breakers = Vec::new();
        for (name, detector) in self.detectors {
            let period = self
                .spec
                .breakers
                .iter()
                .find(|b| b.name == name)
                .map(|b| b.evaluation_period)
                .unwrap_or_default();
            let history = history::fetch(
                sources,
                options.prometheus.as_deref(),
                &name,
                detector.as_ref(),
                (options.start, options.end, period),
            )
            .await?;
            breakers.push(BreakerHistory {
                name,
                detector,
                history,
            });
        }
        Ok((self.spec, breakers, self.not_replayable))
    }
}

/// Checks the range before anything is asked of Prometheus.
pub fn check_range(start: Timestamp, end: Timestamp) -> Result<(), BacktestError> {
    if start >= end {
        return Err(BacktestError::Range(format!(
            "--start {start} is not before --end {end}"
        )));
    }
    Ok(())
}

/// Runs the backtest of one policy: fetch, then replay.
pub async fn run(
    sources: &Sources,
    policy: &Policy,
    options: &Options,
) -> Result<Backtest, BacktestError> {
    check_range(options.start, options.end)?;
    let plan = Plan::new(policy, options.breaker.as_deref())?;
    let (spec, breakers, not_replayable) = plan.fetch(sources, options).await?;
    replay_histories(policy, &spec, breakers, not_replayable, options)
}

/// The replay of fetched (or generated) histories: pure, no I/O.
pub fn replay_histories(
    policy: &Policy,
    spec: &ResolvedSpec,
    breakers: Vec<BreakerHistory>,
    not_replayable: Vec<NotReplayable>,
    options: &Options,
) -> Result<Backtest, BacktestError> {
    if let Some(given) = options.fleet_size {
        let seen: std::collections::BTreeSet<&str> = breakers
            .iter()
            .flat_map(|b| b.history.keys.iter().map(|k| k.pod.as_str()))
            .collect();
        if given < seen.len() {
            return Err(BacktestError::FleetSize {
                given,
                seen: seen.len(),
            });
        }
    }
    let replayed = replay::replay(
        &policy.kvs,
        spec,
        &breakers,
        (options.start, options.end),
        options.fleet_size,
        options.charts,
    );
    let infos = breakers
        .iter()
        .map(|b| {
            let resolved = spec.breakers.iter().find(|r| r.name == b.name);
            BreakerInfo {
                name: b.name.clone(),
                detector: resolved.map_or("", |r| r.detection.kind()),
                evaluation_period: resolved.map(|r| r.evaluation_period).unwrap_or_default(),
                quantity_name: b.detector.quantity_name(),
                thresholds: b.detector.thresholds(),
            }
        })
        .collect();
    let namespace = policy
        .kvs
        .metadata
        .namespace
        .as_deref()
        .unwrap_or("default");
    Ok(Backtest {
        label: policy.label.clone(),
        resource: format!(
            "{namespace}/{}",
            policy.kvs.metadata.name.as_deref().unwrap_or_default()
        ),
        start: options.start,
        end: options.end,
        breakers: infos,
        not_replayable,
        replayed,
    })
}

/// Where the HTML report goes.
pub fn write_report(path: &PathBuf, backtests: &[&Backtest]) -> Result<(), BacktestError> {
    let page = html::render(backtests);
    std::fs::write(path, page).map_err(|e| BacktestError::Report {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
