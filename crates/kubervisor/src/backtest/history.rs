//! A breaker's query over the whole range: range queries with step = evaluationPeriod
//! (a `valueTrend`'s own step, from one window before the start), in pages that stay
//! under Prometheus' limit of points per series.

use std::collections::HashMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::BacktestError;
use super::detector::{Replayable, SeriesKey, series_keys};
use crate::source::{Labels, QueryResult, SourceError, Sources};

/// Prometheus refuses range queries of more than 11,000 points per series.
pub const MAX_POINTS_PER_QUERY: usize = 10_000;
/// How long one page of a range query may take.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a breaker's query returned at each evaluation instant of the range.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub start: Timestamp,
    pub step: Duration,
    /// What each series is about, read once from its labels.
    pub keys: Vec<SeriesKey>,
    /// Per instant `start + i × step`: (series, value).
    pub instants: Vec<Vec<(usize, f64)>>,
}

impl History {
    /// An empty history with one slot per evaluation instant in [start, end].
    pub fn empty(start: Timestamp, end: Timestamp, step: Duration) -> History {
        History {
            start,
            step,
            keys: Vec::new(),
            instants: vec![Vec::new(); instant_count(start, end, step)],
        }
    }

    /// The time of instant `i`.
    pub fn time(&self, i: usize) -> Timestamp {
        self.start + SignedDuration::try_from(self.step * i as u32).unwrap_or_default()
    }

    /// The instant a sample time falls on, if it is one of this history's.
    fn index_of(&self, seconds: f64) -> Option<usize> {
        let offset = seconds - self.start.as_millisecond() as f64 / 1000.0;
        let i = (offset / self.step.as_secs_f64()).round();
        (i >= 0.0 && (i as usize) < self.instants.len()).then_some(i as usize)
    }

    /// The samples of the instant `time` falls on (none when it is outside the history).
    pub fn samples_at(&self, time: Timestamp) -> &[(usize, f64)] {
        self.index_of(time.as_millisecond() as f64 / 1000.0)
            .map_or(&[], |i| self.instants[i].as_slice())
    }

    /// The instants in [from, to], oldest first.
    pub fn indices_between(&self, from: Timestamp, to: Timestamp) -> std::ops::Range<usize> {
        let step = self.step.as_secs_f64();
        if step <= 0.0 || from > to {
            return 0..0;
        }
        let offset = |t: Timestamp| t.duration_since(self.start).as_secs_f64() / step;
        // A hair of tolerance so that bounds exactly on an instant include it despite rounding.
        let first = (offset(from) - 1e-9).ceil().max(0.0);
        let last = (offset(to) + 1e-9).floor();
        if last < 0.0 {
            return 0..0;
        }
        let end = (last as usize + 1).min(self.instants.len());
        (first as usize).min(end)..end
    }
}

/// The number of evaluation instants `start + i × step` in [start, end].
pub fn instant_count(start: Timestamp, end: Timestamp, step: Duration) -> usize {
    let span = end.duration_since(start).as_secs_f64();
    if span < 0.0 || step.is_zero() {
        return 0;
    }
    // A hair of tolerance so that an end exactly on an instant counts despite rounding.
    (span / step.as_secs_f64() + 1e-9).floor() as usize + 1
}

/// Runs the breaker's query over [start, end], page by page, at `base` (the breaker's
/// own `prometheusService` when `None`).
pub async fn fetch(
    sources: &Sources,
    base: Option<&str>,
    breaker: &str,
    detector: &dyn Replayable,
    (start, end, period): (Timestamp, Timestamp, Duration),
) -> Result<History, BacktestError> {
    let base = base.unwrap_or(detector.prometheus_service());
    let (first_instant, step) = detector.range(start, period);
    let mut history = History::empty(first_instant, end, step);
    let mut labels: Vec<Labels> = Vec::new();
    let mut by_labels: HashMap<Labels, usize> = HashMap::new();
    let total = history.instants.len();
    let mut first = 0;
    while first < total {
        let last = (first + MAX_POINTS_PER_QUERY).min(total) - 1;
        let (page_start, page_end) = (history.time(first), history.time(last));
        let answer = sources
            .query_range(
                base,
                detector.promql(),
                page_start,
                page_end,
                step,
                PAGE_TIMEOUT,
            )
            .await
            .map_err(|source| BacktestError::Source {
                breaker: breaker.to_string(),
                source: Box::new(source),
            })?;
        let series = match answer {
            QueryResult::Matrix(series) => series,
            other => {
                return Err(BacktestError::Query {
                    breaker: breaker.to_string(),
                    reason: format!(
                        "the range query returned a {}, expected a matrix with one series per pod",
                        other.type_name()
                    ),
                });
            }
        };
        for series in series {
            let next = labels.len();
            let index = *by_labels.entry(series.labels.clone()).or_insert_with(|| {
                labels.push(series.labels.clone());
                next
            });
            for (time, value) in series.values {
                if let Some(i) = history.index_of(time) {
                    history.instants[i].push((index, value));
                }
            }
        }
        first = last + 1;
    }
    history.keys = series_keys(detector, &labels).map_err(|(i, label)| {
        let field = match detector.key_label() {
            Some((key, field)) if key == label => field,
            _ => "podNamekey",
        };
        BacktestError::Source {
            breaker: breaker.to_string(),
            source: Box::new(SourceError::MissingLabel {
                request: crate::source::Request::Prometheus {
                    base: base.to_string(),
                    promql: detector.promql().to_string(),
                },
                series: format!("{:?}", labels[i]),
                label,
                field,
            }),
        }
    })?;
    Ok(history)
}
