//! Detectors: from the samples of one evaluation to findings per pod.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};

use kubervisor_api::{
    ContinuousRule, DiscreteRule, OutlierDirection, OutlierRule, SuccessRateRule, ThresholdRule,
    TrendRule, ValueList,
};

use crate::stats::{self, RobustSpread};

/// One series of a discrete-value query: the pod, the value of the `key` label, the sample.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscreteSample {
    pub pod: String,
    pub key: String,
    pub value: f64,
}

/// One series of a continuous-value query: the pod and its value relative to the fleet.
#[derive(Clone, Debug, PartialEq)]
pub struct ContinuousSample {
    pub pod: String,
    pub value: f64,
}

/// One series of a range query: the pod and its (unix seconds, value) points, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct TrendSeries {
    pub pod: String,
    pub points: Vec<(f64, f64)>,
}

/// The fleet statistic a pod was compared with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FleetStatistic {
    /// `successRateOutlier`: mean and population standard deviation of the success rates.
    MeanStdev { hosts: usize, mean: f64, stdev: f64 },
    /// `continuousOutlier`: median and median absolute deviation of the values.
    MedianMad {
        hosts: usize,
        median: f64,
        mad: f64,
        /// Mean absolute deviation from the median, used when the MAD is 0.
        mean_ad: f64,
    },
}

impl fmt::Display for FleetStatistic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FleetStatistic::MeanStdev { hosts, mean, stdev } => write!(
                f,
                "fleet of {hosts}: mean {}, stdev {}",
                fmt_value(mean),
                fmt_value(stdev)
            ),
            FleetStatistic::MedianMad {
                hosts,
                median,
                mad,
                mean_ad,
            } => {
                write!(
                    f,
                    "fleet of {hosts}: median {}, MAD {}",
                    fmt_value(median),
                    fmt_value(mad)
                )?;
                if mad == 0.0 {
                    write!(f, ", mean absolute deviation {}", fmt_value(mean_ad))?;
                }
                Ok(())
            }
        }
    }
}

/// A bound a pod's value or slope went past.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    Above(f64),
    Below(f64),
}

impl Bound {
    /// The bound's value.
    pub fn value(self) -> f64 {
        match self {
            Bound::Above(v) | Bound::Below(v) => v,
        }
    }

    /// How far `x` is past the bound, when it is.
    fn excess(self, x: f64) -> Option<f64> {
        match self {
            Bound::Above(bound) if x > bound => Some(x - bound),
            Bound::Below(bound) if x < bound => Some(bound - x),
            _ => None,
        }
    }

    /// The first of the bounds `x` is past, with the excess.
    fn first_crossed(above: Option<f64>, below: Option<f64>, x: f64) -> Option<(Bound, f64)> {
        [above.map(Bound::Above), below.map(Bound::Below)]
            .into_iter()
            .flatten()
            .find_map(|bound| bound.excess(x).map(|excess| (bound, excess)))
    }
}

/// A pod a detector found anomalous.
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    pub pod: String,
    /// How bad it is, to eject the worst first: the bad ratio or the deviation.
    pub score: f64,
    /// The numbers that made it anomalous, for events and logs.
    pub evidence: Evidence,
}

/// Why a detector found a pod anomalous: the rule and its numbers, rendered to text
/// only when reported.
#[derive(Clone, Debug, PartialEq)]
pub enum Evidence {
    /// `discreteValueOutOfList`: the share of bad values of the key label.
    BadRatio {
        key: String,
        ratio: f64,
        observations: f64,
        tolerance_percent: u32,
    },
    /// `continuousValueDeviation`: how far the pod's relative value is from 1.
    Deviation {
        deviation: f64,
        max_deviation_percent: f64,
    },
    /// A custom detector named the pod.
    Reported,
    /// `valueThreshold`: the pod's value is past a bound.
    Threshold { value: f64, bound: Bound },
    /// `valueTrend`: the least-squares slope of the pod's value is past a bound.
    Trend {
        slope: f64,
        points: usize,
        window_seconds: f64,
        bound: Bound,
    },
    /// `successRateOutlier`: the pod's success rate is under mean − stdevFactor × stdev.
    SuccessRate {
        rate: f64,
        observations: f64,
        threshold: f64,
        stdev_factor: f64,
        statistic: FleetStatistic,
    },
    /// `continuousOutlier`: the pod's modified z-score is past maxZScore.
    Outlier {
        value: f64,
        z_score: f64,
        max_z_score: f64,
        statistic: FleetStatistic,
    },
}

impl Evidence {
    /// What was compared and what it was compared with, for the status.
    pub fn compared(&self) -> Option<(f64, f64)> {
        match self {
            Evidence::BadRatio {
                ratio,
                tolerance_percent,
                ..
            } => Some((*ratio, f64::from(*tolerance_percent) / 100.0)),
            Evidence::Deviation {
                deviation,
                max_deviation_percent,
            } => Some((*deviation, max_deviation_percent / 100.0)),
            Evidence::Reported => None,
            Evidence::Threshold { value, bound } => Some((*value, bound.value())),
            Evidence::Trend { slope, bound, .. } => Some((*slope, bound.value())),
            Evidence::SuccessRate {
                rate, threshold, ..
            } => Some((*rate, *threshold)),
            Evidence::Outlier {
                z_score,
                max_z_score,
                ..
            } => Some((*z_score, max_z_score.copysign(*z_score))),
        }
    }

    /// The fleet statistic the pod was compared with, for the methods that use one.
    pub fn statistic(&self) -> Option<FleetStatistic> {
        match self {
            Evidence::SuccessRate { statistic, .. } | Evidence::Outlier { statistic, .. } => {
                Some(*statistic)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::BadRatio {
                key,
                ratio,
                observations,
                tolerance_percent,
            } => write!(
                f,
                "{:.1}% bad {key} over {} observations > tolerance {tolerance_percent}%",
                ratio * 100.0,
                fmt_count(*observations)
            ),
            Evidence::Deviation {
                deviation,
                max_deviation_percent,
            } => write!(
                f,
                "deviates {:.1}% from the fleet > maxDeviationPercent {max_deviation_percent}%",
                deviation * 100.0
            ),
            Evidence::Reported => f.write_str("reported by the custom detector"),
            Evidence::Threshold { value, bound } => match bound {
                Bound::Above(b) => {
                    write!(f, "value {} > above {}", fmt_value(*value), fmt_value(*b))
                }
                Bound::Below(b) => {
                    write!(f, "value {} < below {}", fmt_value(*value), fmt_value(*b))
                }
            },
            Evidence::Trend {
                slope,
                points,
                window_seconds,
                bound,
            } => {
                let (op, field) = match bound {
                    Bound::Above(_) => (">", "maxSlope"),
                    Bound::Below(_) => ("<", "minSlope"),
                };
                write!(
                    f,
                    "slope {}/s over {points} points in {window_seconds} s {op} {field} {}",
                    fmt_value(*slope),
                    fmt_value(bound.value())
                )
            }
            Evidence::SuccessRate {
                rate,
                observations,
                threshold,
                stdev_factor,
                statistic,
            } => write!(
                f,
                "success rate {:.2}% over {} observations < {:.2}% (mean − {stdev_factor} × stdev; {statistic})",
                rate * 100.0,
                fmt_count(*observations),
                threshold * 100.0
            ),
            Evidence::Outlier {
                value,
                z_score,
                max_z_score,
                statistic,
            } => write!(
                f,
                "value {} has modified z-score {z_score:.2}, beyond maxZScore {max_z_score} ({statistic})",
                fmt_value(*value)
            ),
        }
    }
}

/// What one evaluation of a detector found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Findings {
    /// Anomalous pods, worst first, ties broken by name.
    pub anomalies: Vec<Anomaly>,
    /// Pods judged healthy.
    pub healthy: Vec<String>,
    /// Pods present in the data but not judged, with the reason.
    pub not_judged: Vec<(String, String)>,
    /// The detector names only anomalous pods (a custom detector): every other pod it
    /// could see counts as judged healthy.
    pub unlisted_are_healthy: bool,
    /// The fleet statistic the pods were compared with, for the fleet-relative methods.
    pub statistic: Option<FleetStatistic>,
    /// Set when the data was too thin to judge anyone (fewer than minimumHosts).
    pub not_enough_data: Option<String>,
}

impl Findings {
    fn finish(mut self) -> Findings {
        // A pod is judged once, so no two entries compare equal and an unstable sort
        // gives the same order as a stable one.
        self.anomalies
            .sort_unstable_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.pod.cmp(&b.pod)));
        self.healthy.sort_unstable();
        self.not_judged.sort_unstable();
        self
    }
}

/// Judges pods by the share of bad values of the key label.
///
/// Per pod, samples whose key is good and bad are summed; a pod with fewer than
/// `min_activity` observations is not judged; a pod is anomalous when
/// bad / total > tolerance / 100, compared without any rounding.
pub fn discrete(rule: &DiscreteRule, samples: &[DiscreteSample]) -> Findings {
    let mut tallies = Tallies::for_discrete(rule, samples.len());
    for sample in samples {
        tallies.add(Cow::Borrowed(&sample.pod), &sample.key, sample.value);
    }
    discrete_tallied(rule, tallies)
}

/// [`discrete`] on tallies already summed, for instance while an answer was read.
pub fn discrete_tallied(rule: &DiscreteRule, tallies: Tallies<'_, '_>) -> Findings {
    let mut findings = Findings {
        healthy: Vec::with_capacity(tallies.pods.len() + tallies.pending.len()),
        ..Findings::default()
    };
    for (pod, tally) in tallies.into_pods() {
        let total = tally.good + tally.bad;
        if let Some(why) = tally.invalid {
            findings.not_judged.push((pod.into_owned(), why));
        } else if total < f64::from(rule.min_activity) {
            findings.not_judged.push((
                pod.into_owned(),
                format!(
                    "{} observations, fewer than minActivity {}",
                    fmt_count(total),
                    rule.min_activity
                ),
            ));
        } else if tally.bad * 100.0 > f64::from(rule.tolerance_percent) * total {
            let ratio = tally.bad / total;
            findings.anomalies.push(Anomaly {
                pod: pod.into_owned(),
                score: ratio,
                evidence: Evidence::BadRatio {
                    key: rule.key.clone(),
                    ratio,
                    observations: total,
                    tolerance_percent: rule.tolerance_percent,
                },
            });
        } else {
            findings.healthy.push(pod.into_owned());
        }
    }
    findings.finish()
}

/// Good and bad observations of one pod.
#[derive(Default)]
struct Tally {
    good: f64,
    bad: f64,
    invalid: Option<String>,
}

impl Tally {
    fn count(&mut self, observation: Observation) {
        match observation {
            Observation::Good(value) => self.good += value,
            Observation::Bad(value) => self.bad += value,
            Observation::Invalid(why) => {
                self.invalid.get_or_insert(why);
            }
        }
    }
}

/// One sample, judged by its key as it was added.
enum Observation {
    Good(f64),
    Bad(f64),
    Invalid(String),
}

/// A sample waiting in [`Tallies`]' batch: its pod's name, hashed, and what it counts.
struct Pending<'a> {
    hash: u64,
    pod: Cow<'a, str>,
    observation: Observation,
}

/// A pod's place in [`Tallies`]' table: its name's hash and its position in `pods`.
#[derive(Clone, Copy)]
struct Slot {
    hash: u64,
    at: usize,
}

impl Slot {
    const EMPTY: Slot = Slot {
        hash: 0,
        at: usize::MAX,
    };
}

/// Linear probing from `hash`'s slot in a table a power of two long, never full: the pod
/// of the first slot holding `hash` that `is_it` accepts, or else the empty slot where it
/// would go.
fn probe(slots: &[Slot], hash: u64, mut is_it: impl FnMut(usize) -> bool) -> Result<usize, usize> {
    let mask = slots.len() - 1;
    let mut i = hash as usize & mask;
    loop {
        let slot = slots[i];
        if slot.at == usize::MAX {
            return Err(i);
        }
        if slot.hash == hash && is_it(slot.at) {
            return Ok(slot.at);
        }
        i = (i + 1) & mask;
    }
}

/// Samples counted together: the table's probes for a batch are made before any of its
/// samples is counted (see [`Tallies::flush`]).
const BATCH: usize = 32;

/// Per-pod good and bad counts of a keyed query (`discreteValueOutOfList`,
/// `successRateOutlier`), summed sample by sample: the detector's accumulators, which a
/// reader can fill while it reads an answer. Pods keep the order they first appear in;
/// their names are borrowed (`'a`) where the caller can lend them.
///
/// The pods are found through an open-addressed table of their names' hashes. An answer
/// of 100,000 series in random order (Prometheus does not sort instant vectors) makes
/// nearly every lookup a cache miss on the table, then on the pod's entry, then on its
/// name; samples are therefore counted in batches, whose table slots and names are all
/// read first, so that the processor waits for those misses side by side rather than one
/// after the other. The hash is SipHash with per-table random keys (std's `RandomState`):
/// pod names come from a source the operator does not control, and a faster hasher
/// measured no better (the cost is the misses, not the hashing).
pub struct Tallies<'r, 'a> {
    key: &'r str,
    values: &'r ValueList,
    hasher: RandomState,
    /// A power of two long, at most half full.
    slots: Vec<Slot>,
    /// Each pod's name, its hash and its counts, in the order the pods first appear.
    pods: Vec<(Cow<'a, str>, u64, Tally)>,
    pending: Vec<Pending<'a>>,
}

impl<'r, 'a> Tallies<'r, 'a> {
    /// Room for about `pods` pods up front: no growth while an answer is read.
    fn new(key: &'r str, values: &'r ValueList, pods: usize) -> Self {
        Tallies {
            key,
            values,
            hasher: RandomState::new(),
            slots: vec![Slot::EMPTY; Self::slots_for(pods)],
            pods: Vec::with_capacity(pods),
            pending: Vec::with_capacity(BATCH),
        }
    }

    /// Slots for `pods` pods: a power of two, at least twice as many.
    fn slots_for(pods: usize) -> usize {
        pods.max(4).saturating_mul(2).next_power_of_two()
    }

    /// Tallies for a `discreteValueOutOfList` rule, with room for about `pods` pods.
    pub fn for_discrete(rule: &'r DiscreteRule, pods: usize) -> Self {
        Tallies::new(&rule.key, &rule.values, pods)
    }

    /// Tallies for a `successRateOutlier` rule, with room for about `pods` pods.
    pub fn for_success_rate(rule: &'r SuccessRateRule, pods: usize) -> Self {
        Tallies::new(&rule.key, &rule.values, pods)
    }

    /// Counts one sample: `key` is the value of the rule's key label. A non-finite or
    /// negative count marks the pod invalid.
    pub fn add(&mut self, pod: Cow<'a, str>, key: &str, value: f64) {
        let observation = if !value.is_finite() || value < 0.0 {
            let label = self.key;
            Observation::Invalid(format!(
                "sample {label}={key:?} has value {value}, not a finite count"
            ))
        } else if self.values.is_good(key) {
            Observation::Good(value)
        } else {
            Observation::Bad(value)
        };
        // A pod's series usually come together: the previous sample's hash is reused.
        let previous = match self.pending.last() {
            Some(p) => Some((&p.pod, p.hash)),
            None => self.pods.last().map(|(name, hash, _)| (name, *hash)),
        };
        let hash = match previous {
            Some((name, hash)) if *name == pod => hash,
            _ => self.hasher.hash_one(&*pod),
        };
        self.pending.push(Pending {
            hash,
            pod,
            observation,
        });
        if self.pending.len() == BATCH {
            self.flush();
        }
    }

    /// Forgets every sample, keeping the room: for a reader that starts an answer over.
    pub fn clear(&mut self) {
        self.slots.fill(Slot::EMPTY);
        self.pods.clear();
        self.pending.clear();
    }

    /// Counts the batch. The table's slots of the whole batch are read first, then the
    /// entries and names they point to: these loads do not depend on one another, so
    /// their misses overlap. Only then is each sample counted, in order, on what is now
    /// in the cache.
    fn flush(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        if (self.pods.len() + pending.len()) * 2 > self.slots.len() {
            self.grow(self.pods.len() + pending.len());
        }
        let mask = self.slots.len() - 1;
        for p in &pending {
            std::hint::black_box(self.slots[p.hash as usize & mask].at);
        }
        for p in &pending {
            // The pod a lookup compares first.
            if let Ok(at) = probe(&self.slots, p.hash, |_| true) {
                std::hint::black_box(self.pods[at].0.as_bytes().first().copied());
            }
        }
        for p in pending.drain(..) {
            let at = self.position(p.hash, p.pod);
            self.pods[at].2.count(p.observation);
        }
        self.pending = pending;
    }

    /// The position of `pod` in `pods`, added if it is new.
    fn position(&mut self, hash: u64, pod: Cow<'a, str>) -> usize {
        // Answers usually list a pod's series together: the last pod is checked first.
        if let Some((name, h, _)) = self.pods.last()
            && *h == hash
            && *name == pod
        {
            return self.pods.len() - 1;
        }
        match probe(&self.slots, hash, |at| self.pods[at].0 == pod) {
            Ok(at) => at,
            Err(empty) => {
                let at = self.pods.len();
                self.slots[empty] = Slot { hash, at };
                self.pods.push((pod, hash, Tally::default()));
                at
            }
        }
    }

    /// Doubles the table until `pods` pods fit, placing the known ones again.
    fn grow(&mut self, pods: usize) {
        let mut slots = vec![Slot::EMPTY; Self::slots_for(pods).max(self.slots.len() * 2)];
        for (at, (_, hash, _)) in self.pods.iter().enumerate() {
            // Names are unique here: no slot is taken for another, only the empty one is.
            let empty = probe(&slots, *hash, |_| false).unwrap_err();
            slots[empty] = Slot { hash: *hash, at };
        }
        self.slots = slots;
    }

    /// Every pod with its counts, in the order they first appeared.
    fn into_pods(mut self) -> impl Iterator<Item = (Cow<'a, str>, Tally)> {
        self.flush();
        self.pods.into_iter().map(|(pod, _, tally)| (pod, tally))
    }

    /// The pods in name order, as the fleet statistics are summed.
    fn sorted(self) -> Vec<(Cow<'a, str>, Tally)> {
        let mut pods: Vec<_> = self.into_pods().collect();
        pods.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        pods
    }
}

/// One value per pod: a pod with a non-finite value or several series is not judged.
fn one_value_per_pod(samples: &[ContinuousSample], findings: &mut Findings) -> Vec<(String, f64)> {
    let mut values: BTreeMap<&str, Result<f64, String>> = BTreeMap::new();
    for sample in samples {
        let verdict = if !sample.value.is_finite() {
            Err(format!("value {} is not a finite number", sample.value))
        } else {
            Ok(sample.value)
        };
        values
            .entry(sample.pod.as_str())
            .and_modify(|v| {
                if v.is_ok() {
                    *v = Err(
                        "several series for this pod: aggregate by the pod label in the query"
                            .into(),
                    );
                }
            })
            .or_insert(verdict);
    }
    let mut judged = Vec::new();
    for (pod, value) in values {
        match value {
            Ok(v) => judged.push((pod.to_string(), v)),
            Err(why) => findings.not_judged.push((pod.to_string(), why)),
        }
    }
    judged
}

/// With fewer than `minimum_hosts` pods to judge, nobody is judged.
fn enough_hosts(
    judged: &mut Vec<(String, f64)>,
    minimum_hosts: u32,
    what: &str,
    findings: &mut Findings,
) -> bool {
    if judged.len() >= minimum_hosts as usize {
        return true;
    }
    let why = format!(
        "{} {what}, fewer than minimumHosts {minimum_hosts}: nothing is judged",
        judged.len()
    );
    for (pod, _) in judged.drain(..) {
        findings.not_judged.push((pod, why.clone()));
    }
    findings.not_enough_data = Some(why);
    false
}

/// `valueThreshold`: a pod is anomalous when its value is > `above` or < `below`.
pub fn threshold(rule: &ThresholdRule, samples: &[ContinuousSample]) -> Findings {
    let mut findings = Findings::default();
    for (pod, value) in one_value_per_pod(samples, &mut findings) {
        match Bound::first_crossed(rule.above, rule.below, value) {
            Some((bound, excess)) => findings.anomalies.push(Anomaly {
                pod,
                score: excess,
                evidence: Evidence::Threshold { value, bound },
            }),
            None => findings.healthy.push(pod),
        }
    }
    findings.finish()
}

/// Fewest points a pod needs in the window for its slope to be judged.
pub const MIN_TREND_POINTS: usize = 3;

/// `valueTrend`: a pod is anomalous when the least-squares slope of its values (units per
/// second) is > `maxSlope` or < `minSlope`; pods with fewer than 3 finite points are not
/// judged.
pub fn trend(rule: &TrendRule, series: &[TrendSeries]) -> Findings {
    let mut findings = Findings::default();
    /// A pod's finite points, or why it cannot be judged.
    type Points = Result<Vec<(f64, f64)>, String>;
    let mut by_pod: BTreeMap<&str, Points> = BTreeMap::new();
    for s in series {
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(t, v)| t.is_finite() && v.is_finite())
            .collect();
        by_pod
            .entry(s.pod.as_str())
            .and_modify(|p| {
                *p = Err(
                    "several series for this pod: aggregate by the pod label in the query".into(),
                )
            })
            .or_insert(Ok(points));
    }
    let window_seconds = rule.window.as_secs_f64();
    for (pod, points) in by_pod {
        let points = match points {
            Ok(points) => points,
            Err(why) => {
                findings.not_judged.push((pod.to_string(), why));
                continue;
            }
        };
        let slope = (points.len() >= MIN_TREND_POINTS)
            .then(|| stats::slope(&points))
            .flatten();
        let Some(slope) = slope else {
            findings.not_judged.push((
                pod.to_string(),
                format!(
                    "{} points with distinct times in the window, fewer than {MIN_TREND_POINTS}",
                    points.len()
                ),
            ));
            continue;
        };
        match Bound::first_crossed(rule.max_slope, rule.min_slope, slope) {
            Some((bound, excess)) => findings.anomalies.push(Anomaly {
                pod: pod.to_string(),
                score: excess,
                evidence: Evidence::Trend {
                    slope,
                    points: points.len(),
                    window_seconds,
                    bound,
                },
            }),
            None => findings.healthy.push(pod.to_string()),
        }
    }
    findings.finish()
}

/// `successRateOutlier`, as Envoy defines it: pods with fewer than `requestVolume`
/// observations are not judged; with fewer than `minimumHosts` pods left nobody is; a pod
/// is anomalous when its success rate is < mean − stdevFactor × stdev (population stdev).
pub fn success_rate_outlier(rule: &SuccessRateRule, samples: &[DiscreteSample]) -> Findings {
    let mut tallies = Tallies::for_success_rate(rule, samples.len());
    for sample in samples {
        tallies.add(Cow::Borrowed(&sample.pod), &sample.key, sample.value);
    }
    success_rate_outlier_tallied(rule, tallies)
}

/// [`success_rate_outlier`] on tallies already summed, for instance while an answer was read.
pub fn success_rate_outlier_tallied(rule: &SuccessRateRule, tallies: Tallies<'_, '_>) -> Findings {
    let mut findings = Findings::default();
    let mut rates: Vec<(String, f64)> = Vec::new();
    let mut volumes: BTreeMap<String, f64> = BTreeMap::new();
    for (pod, tally) in tallies.sorted() {
        let total = tally.good + tally.bad;
        if let Some(why) = tally.invalid {
            findings.not_judged.push((pod.to_string(), why));
        } else if total < f64::from(rule.request_volume) || total <= 0.0 {
            findings.not_judged.push((
                pod.to_string(),
                format!(
                    "{} observations, fewer than requestVolume {}",
                    fmt_count(total),
                    rule.request_volume
                ),
            ));
        } else {
            rates.push((pod.to_string(), tally.good / total));
            volumes.insert(pod.to_string(), total);
        }
    }
    if !enough_hosts(
        &mut rates,
        rule.minimum_hosts,
        "pods with enough requests",
        &mut findings,
    ) {
        return findings.finish();
    }
    let values: Vec<f64> = rates.iter().map(|(_, r)| *r).collect();
    let (Some(mean), Some(stdev)) = (stats::mean(&values), stats::population_stdev(&values)) else {
        return findings.finish();
    };
    let statistic = FleetStatistic::MeanStdev {
        hosts: values.len(),
        mean,
        stdev,
    };
    findings.statistic = Some(statistic);
    let threshold = mean - rule.stdev_factor * stdev;
    for (pod, rate) in rates {
        if rate < threshold {
            let observations = volumes[&pod];
            findings.anomalies.push(Anomaly {
                score: threshold - rate,
                evidence: Evidence::SuccessRate {
                    rate,
                    observations,
                    threshold,
                    stdev_factor: rule.stdev_factor,
                    statistic,
                },
                pod,
            });
        } else {
            findings.healthy.push(pod);
        }
    }
    findings.finish()
}

/// `continuousOutlier`: a pod is anomalous when its modified z-score against the fleet
/// (see [`RobustSpread::z_score`]) exceeds `maxZScore` in the rule's direction and its
/// value is at least `minDeviationPercent` % of the median away from the median; worst
/// (highest |score|) first.
pub fn continuous_outlier(rule: &OutlierRule, samples: &[ContinuousSample]) -> Findings {
    let mut findings = Findings::default();
    let mut values = one_value_per_pod(samples, &mut findings);
    if !enough_hosts(
        &mut values,
        rule.minimum_hosts,
        "pods with a value",
        &mut findings,
    ) {
        return findings.finish();
    }
    let numbers: Vec<f64> = values.iter().map(|(_, v)| *v).collect();
    let Some(spread) = RobustSpread::of(&numbers) else {
        return findings.finish();
    };
    let statistic = FleetStatistic::MedianMad {
        hosts: numbers.len(),
        median: spread.median,
        mad: spread.mad,
        mean_ad: spread.mean_ad,
    };
    findings.statistic = Some(statistic);
    // However small the fleet's spread, a pod this close to the median is not an outlier.
    let min_deviation = rule.min_deviation_percent / 100.0 * spread.median.abs();
    for (pod, value) in values {
        let z_score = spread.z_score(value);
        let anomalous = (value - spread.median).abs() >= min_deviation
            && match rule.direction {
                OutlierDirection::Above => z_score > rule.max_z_score,
                OutlierDirection::Below => z_score < -rule.max_z_score,
                OutlierDirection::Both => z_score.abs() > rule.max_z_score,
            };
        if anomalous {
            findings.anomalies.push(Anomaly {
                pod,
                score: z_score.abs(),
                evidence: Evidence::Outlier {
                    value,
                    z_score,
                    max_z_score: rule.max_z_score,
                    statistic,
                },
            });
        } else {
            findings.healthy.push(pod);
        }
    }
    findings.finish()
}

/// Judges pods by their value relative to the fleet: anomalous when
/// |1 - value| > maxDeviationPercent / 100.
pub fn continuous(rule: &ContinuousRule, samples: &[ContinuousSample]) -> Findings {
    // A pod with several series is judged on its worst one.
    let mut worst: BTreeMap<&str, Result<f64, String>> = BTreeMap::new();
    for sample in samples {
        let entry = worst.entry(sample.pod.as_str()).or_insert(Ok(0.0));
        if !sample.value.is_finite() {
            *entry = Err(format!(
                "relative value {} is not a finite number",
                sample.value
            ));
        } else if let Ok(deviation) = entry {
            *deviation = deviation.max((1.0 - sample.value).abs());
        }
    }
    let mut findings = Findings::default();
    for (pod, deviation) in worst {
        match deviation {
            Err(why) => findings.not_judged.push((pod.to_string(), why)),
            Ok(deviation) if deviation * 100.0 > rule.max_deviation_percent => {
                findings.anomalies.push(Anomaly {
                    pod: pod.to_string(),
                    score: deviation,
                    evidence: Evidence::Deviation {
                        deviation,
                        max_deviation_percent: rule.max_deviation_percent,
                    },
                })
            }
            Ok(_) => findings.healthy.push(pod.to_string()),
        }
    }
    findings.finish()
}

/// The pods a custom detector reported are anomalous; it says nothing of the others.
pub fn custom(reported: &[String]) -> Findings {
    let mut pods: Vec<&String> = reported.iter().collect();
    pods.sort();
    pods.dedup();
    Findings {
        anomalies: pods
            .into_iter()
            .map(|pod| Anomaly {
                pod: pod.clone(),
                score: 1.0,
                evidence: Evidence::Reported,
            })
            .collect(),
        unlisted_are_healthy: true,
        ..Findings::default()
    }
    .finish()
}

/// Four significant digits, without a trailing exponent for ordinary magnitudes.
fn fmt_value(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let magnitude = value.abs().log10().floor() as i32;
    if (-4..6).contains(&magnitude) {
        let decimals = (3 - magnitude).max(0) as usize;
        let text = format!("{value:.decimals$}");
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        }
    } else {
        format!("{value:.3e}")
    }
}

fn fmt_count(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use kubervisor_api::ValueList;

    use super::*;

    fn rule(values: ValueList, tolerance: u32, min_activity: u32) -> DiscreteRule {
        DiscreteRule {
            prometheus_service: "prometheus:9090".into(),
            promql: "q".into(),
            key: "code".into(),
            pod_name_key: "pod".into(),
            values,
            tolerance_percent: tolerance,
            min_activity,
        }
    }

    fn good(values: &[&str]) -> ValueList {
        ValueList::Good(values.iter().map(|v| v.to_string()).collect())
    }

    fn bad(values: &[&str]) -> ValueList {
        ValueList::Bad(values.iter().map(|v| v.to_string()).collect())
    }

    fn s(pod: &str, key: &str, value: f64) -> DiscreteSample {
        DiscreteSample {
            pod: pod.into(),
            key: key.into(),
            value,
        }
    }

    fn names(findings: &Findings) -> Vec<&str> {
        findings.anomalies.iter().map(|a| a.pod.as_str()).collect()
    }

    #[test]
    fn pod_with_more_bad_codes_than_tolerance_is_anomalous() {
        let samples = [
            s("a", "200", 38.0),
            s("a", "500", 62.0),
            s("b", "200", 99.0),
            s("b", "500", 1.0),
        ];
        let findings = discrete(&rule(good(&["200"]), 50, 2), &samples);
        assert_eq!(names(&findings), ["a"]);
        assert_eq!(findings.healthy, ["b"]);
        assert!(
            findings.anomalies[0]
                .evidence
                .to_string()
                .contains("62.0% bad code over 100 observations > tolerance 50%"),
            "{}",
            findings.anomalies[0].evidence
        );
    }

    #[test]
    fn bad_values_list_counts_everything_else_as_good() {
        let samples = [s("a", "200", 1.0), s("a", "404", 5.0), s("a", "503", 4.0)];
        let findings = discrete(&rule(bad(&["503"]), 30, 2), &samples);
        // 4 of 10 are 503: 40% > 30%.
        assert_eq!(names(&findings), ["a"]);
        let findings = discrete(&rule(bad(&["503"]), 40, 2), &samples);
        assert!(
            findings.anomalies.is_empty(),
            "exactly at tolerance is not above it"
        );
    }

    #[test]
    fn ratio_is_compared_exactly_not_truncated() {
        // 1 of 3 = 33.3% > 33%: integer arithmetic would have said 33% and missed it.
        let samples = [s("a", "200", 2.0), s("a", "500", 1.0)];
        let findings = discrete(&rule(good(&["200"]), 33, 1), &samples);
        assert_eq!(names(&findings), ["a"]);
        // Fractional counts from increase() are kept as they are.
        let samples = [s("b", "200", 1.5), s("b", "500", 1.4999)];
        assert!(
            discrete(&rule(good(&["200"]), 50, 1), &samples)
                .anomalies
                .is_empty()
        );
    }

    #[test]
    fn pods_below_min_activity_are_not_judged() {
        let samples = [s("quiet", "500", 1.0), s("busy", "500", 3.0)];
        let findings = discrete(&rule(good(&["200"]), 50, 2), &samples);
        assert_eq!(names(&findings), ["busy"]);
        assert_eq!(findings.not_judged.len(), 1);
        assert_eq!(findings.not_judged[0].0, "quiet");
        assert!(
            findings.not_judged[0]
                .1
                .contains("fewer than minActivity 2")
        );
    }

    #[test]
    fn non_finite_or_negative_counts_leave_the_pod_unjudged() {
        let samples = [
            s("nan", "500", f64::NAN),
            s("nan", "200", 10.0),
            s("inf", "500", f64::INFINITY),
            s("neg", "500", -3.0),
        ];
        let findings = discrete(&rule(good(&["200"]), 10, 1), &samples);
        assert!(findings.anomalies.is_empty());
        let unjudged: Vec<&str> = findings
            .not_judged
            .iter()
            .map(|(p, _)| p.as_str())
            .collect();
        assert_eq!(unjudged, ["inf", "nan", "neg"]);
    }

    #[test]
    fn worst_offenders_come_first_ties_by_name() {
        let samples = [
            s("c", "500", 9.0),
            s("c", "200", 1.0),
            s("b", "500", 6.0),
            s("b", "200", 4.0),
            s("a", "500", 6.0),
            s("a", "200", 4.0),
        ];
        let findings = discrete(&rule(good(&["200"]), 50, 2), &samples);
        assert_eq!(names(&findings), ["c", "a", "b"]);
    }

    fn crule(max: f64) -> ContinuousRule {
        ContinuousRule {
            prometheus_service: "p:9090".into(),
            promql: "q".into(),
            pod_name_key: "pod".into(),
            max_deviation_percent: max,
        }
    }

    fn c(pod: &str, value: f64) -> ContinuousSample {
        ContinuousSample {
            pod: pod.into(),
            value,
        }
    }

    #[test]
    fn continuous_flags_pods_deviating_either_way() {
        let samples = [c("high", 1.9), c("low", 0.2), c("ok", 1.1), c("edge", 1.75)];
        let findings = continuous(&crule(75.0), &samples);
        assert_eq!(names(&findings), ["high", "low"]);
        assert_eq!(findings.healthy, ["edge", "ok"]);
        assert!(
            findings.anomalies[0]
                .evidence
                .to_string()
                .contains("deviates 90.0%")
        );
    }

    #[test]
    fn continuous_leaves_non_finite_values_unjudged() {
        let samples = [c("nan", f64::NAN), c("inf", f64::NEG_INFINITY)];
        let findings = continuous(&crule(10.0), &samples);
        assert!(findings.anomalies.is_empty());
        assert_eq!(findings.not_judged.len(), 2);
    }

    #[test]
    fn custom_reports_are_anomalies_deduplicated_and_sorted() {
        let findings = custom(&["b".into(), "a".into(), "b".into()]);
        assert_eq!(names(&findings), ["a", "b"]);
    }
    fn trule(above: Option<f64>, below: Option<f64>) -> ThresholdRule {
        ThresholdRule {
            prometheus_service: "p:9090".into(),
            promql: "q".into(),
            pod_name_key: "pod".into(),
            above,
            below,
        }
    }

    #[test]
    fn threshold_flags_values_past_either_bound() {
        let samples = [
            c("ok", 0.05),
            c("high", 0.4),
            c("edge", 0.1),
            c("low", -1.0),
        ];
        let findings = threshold(&trule(Some(0.1), Some(0.0)), &samples);
        assert_eq!(names(&findings), ["low", "high"]);
        assert_eq!(findings.healthy, ["edge", "ok"]);
        assert_eq!(
            findings.anomalies[1].evidence.to_string(),
            "value 0.4 > above 0.1"
        );
        let findings = threshold(&trule(Some(0.1), None), &samples);
        assert_eq!(names(&findings), ["high"]);
    }

    #[test]
    fn threshold_leaves_nan_inf_and_duplicate_series_unjudged() {
        let samples = [
            c("nan", f64::NAN),
            c("inf", f64::INFINITY),
            c("dup", 1.0),
            c("dup", 2.0),
        ];
        let findings = threshold(&trule(Some(0.1), None), &samples);
        assert!(findings.anomalies.is_empty());
        assert_eq!(findings.not_judged.len(), 3);
    }

    fn trend_rule(max: Option<f64>, min: Option<f64>) -> TrendRule {
        TrendRule {
            prometheus_service: "p:9090".into(),
            promql: "q".into(),
            pod_name_key: "pod".into(),
            window: std::time::Duration::from_secs(300),
            max_slope: max,
            min_slope: min,
        }
    }

    fn line(pod: &str, start: f64, per_second: f64, points: usize) -> TrendSeries {
        TrendSeries {
            pod: pod.into(),
            points: (0..points)
                .map(|i| {
                    let t = 1.8e9 + 15.0 * i as f64;
                    (t, start + per_second * 15.0 * i as f64)
                })
                .collect(),
        }
    }

    #[test]
    fn trend_flags_a_climbing_pod_among_flat_ones() {
        let series = [
            line("flat", 0.02, 0.0, 20),
            line("climb", 0.02, 0.001, 20),
            line("fall", 0.5, -0.002, 20),
        ];
        let findings = trend(&trend_rule(Some(0.0005), Some(-0.001)), &series);
        // Worst first: fall is 0.001/s past its bound, climb 0.0005/s.
        assert_eq!(names(&findings), ["fall", "climb"]);
        assert_eq!(findings.healthy, ["flat"]);
        assert!(
            findings.anomalies[1]
                .evidence
                .to_string()
                .starts_with("slope 0.001/s over 20 points in 300 s > maxSlope 0.0005"),
            "{}",
            findings.anomalies[1].evidence
        );
    }

    #[test]
    fn trend_needs_three_finite_points() {
        let mut gappy = line("gappy", 0.0, 1.0, 4);
        gappy.points[1].1 = f64::NAN;
        gappy.points[2].1 = f64::INFINITY;
        let series = [line("two", 0.0, 1.0, 2), gappy, line("three", 0.0, 1.0, 3)];
        let findings = trend(&trend_rule(Some(0.5), None), &series);
        assert_eq!(names(&findings), ["three"]);
        let unjudged: Vec<&str> = findings
            .not_judged
            .iter()
            .map(|(p, _)| p.as_str())
            .collect();
        assert_eq!(unjudged, ["gappy", "two"]);
    }

    fn srule(minimum_hosts: u32, request_volume: u32) -> SuccessRateRule {
        SuccessRateRule {
            prometheus_service: "p:9090".into(),
            promql: "q".into(),
            pod_name_key: "pod".into(),
            key: "code".into(),
            values: good(&["200"]),
            stdev_factor: 1.9,
            minimum_hosts,
            request_volume,
        }
    }

    /// Pods with the given error percentages over 1000 requests each.
    fn errors(percents: &[(&str, f64)]) -> Vec<DiscreteSample> {
        percents
            .iter()
            .flat_map(|(pod, p)| [s(pod, "200", 10.0 * (100.0 - p)), s(pod, "500", 10.0 * p)])
            .collect()
    }

    #[test]
    fn success_rate_ejects_the_pod_at_forty_percent_errors_among_pods_at_two() {
        let samples = errors(&[
            ("a", 0.0),
            ("b", 1.0),
            ("c", 2.0),
            ("d", 0.0),
            ("e", 1.0),
            ("f", 2.0),
            ("g", 0.0),
            ("bad", 40.0),
        ]);
        let findings = success_rate_outlier(&srule(5, 100), &samples);
        assert_eq!(names(&findings), ["bad"]);
        assert_eq!(findings.healthy.len(), 7);
        let Some(FleetStatistic::MeanStdev { hosts, mean, stdev }) = findings.statistic else {
            panic!("{:?}", findings.statistic)
        };
        assert_eq!(hosts, 8);
        assert!((mean - 0.9425).abs() < 1e-9, "{mean}");
        assert!(stdev > 0.1 && stdev < 0.15, "{stdev}");
        let text = findings.anomalies[0].evidence.to_string();
        assert!(
            text.starts_with("success rate 60.00% over 1000 observations < "),
            "{text}"
        );
        assert!(text.contains("fleet of 8: mean 0.9425"), "{text}");
    }

    #[test]
    fn success_rate_judges_nothing_with_fewer_than_minimum_hosts() {
        let samples = errors(&[("a", 0.0), ("b", 1.0), ("c", 2.0), ("bad", 40.0)]);
        let findings = success_rate_outlier(&srule(5, 100), &samples);
        assert!(findings.anomalies.is_empty() && findings.healthy.is_empty());
        assert_eq!(findings.not_judged.len(), 4);
        assert_eq!(
            findings.not_enough_data.as_deref(),
            Some("4 pods with enough requests, fewer than minimumHosts 5: nothing is judged")
        );
        assert_eq!(findings.statistic, None);
    }

    #[test]
    fn success_rate_skips_pods_below_request_volume() {
        let mut samples = errors(&[("a", 0.0), ("b", 0.0), ("c", 0.0), ("d", 0.0), ("e", 0.0)]);
        samples.push(s("quiet", "500", 50.0));
        let findings = success_rate_outlier(&srule(5, 100), &samples);
        assert!(findings.anomalies.is_empty());
        assert_eq!(findings.not_judged[0].0, "quiet");
        assert!(
            findings.not_judged[0]
                .1
                .contains("fewer than requestVolume 100")
        );
    }

    fn orule(direction: OutlierDirection, minimum_hosts: u32) -> OutlierRule {
        OutlierRule {
            prometheus_service: "p:9090".into(),
            promql: "q".into(),
            pod_name_key: "pod".into(),
            max_z_score: 3.5,
            min_deviation_percent: 10.0,
            direction,
            minimum_hosts,
        }
    }

    fn p99s() -> Vec<ContinuousSample> {
        let mut samples: Vec<ContinuousSample> = (0..7)
            .map(|i| c(&format!("fast-{i}"), 0.024 + 0.001 * f64::from(i)))
            .collect();
        samples.push(c("slow", 0.245));
        samples
    }

    #[test]
    fn outlier_ejects_exactly_the_slow_pod_of_eight() {
        let findings = continuous_outlier(&orule(OutlierDirection::Both, 5), &p99s());
        assert_eq!(names(&findings), ["slow"]);
        assert_eq!(findings.healthy.len(), 7);
        let text = findings.anomalies[0].evidence.to_string();
        assert!(
            text.contains("beyond maxZScore 3.5 (fleet of 8: median 0.0275, MAD 0.002)"),
            "{text}"
        );
        let findings = continuous_outlier(&orule(OutlierDirection::Below, 5), &p99s());
        assert!(findings.anomalies.is_empty());
    }

    #[test]
    fn outlier_spares_a_pod_close_to_the_median_of_a_uniform_fleet() {
        // Seven p99s within 0.1 ms of 30 ms and one 2 ms (6.7 %) above: the MAD is tiny,
        // so the odd pod scores far past maxZScore, but it is within 10 % of the median.
        let mut samples: Vec<ContinuousSample> = (0..7)
            .map(|i| c(&format!("p{i}"), 0.02995 + 0.00001 * f64::from(i)))
            .collect();
        samples.push(c("odd", 0.032));
        let findings = continuous_outlier(&orule(OutlierDirection::Both, 5), &samples);
        assert!(findings.anomalies.is_empty(), "{:?}", findings.anomalies);
        assert_eq!(findings.healthy.len(), 8);
        let by_score_alone = OutlierRule {
            min_deviation_percent: 0.0,
            ..orule(OutlierDirection::Both, 5)
        };
        let findings = continuous_outlier(&by_score_alone, &samples);
        assert_eq!(names(&findings), ["odd"]);
        // 20 % above the median is past both bounds.
        samples.push(c("slow", 0.036));
        let findings = continuous_outlier(&orule(OutlierDirection::Both, 5), &samples);
        assert_eq!(names(&findings), ["slow"]);
    }

    #[test]
    fn outlier_falls_back_on_the_mean_absolute_deviation_when_the_mad_is_zero() {
        let samples = [
            c("a", 0.02),
            c("b", 0.02),
            c("c", 0.02),
            c("d", 0.02),
            c("e", 0.2),
        ];
        let findings = continuous_outlier(&orule(OutlierDirection::Both, 5), &samples);
        assert_eq!(names(&findings), ["e"]);
        assert!(
            findings.anomalies[0]
                .evidence
                .to_string()
                .contains("mean absolute deviation 0.036"),
            "{}",
            findings.anomalies[0].evidence
        );
    }

    #[test]
    fn outlier_degenerate_fleets_flag_nobody() {
        let equal: Vec<ContinuousSample> = (0..6).map(|i| c(&format!("p{i}"), 0.02)).collect();
        let findings = continuous_outlier(&orule(OutlierDirection::Both, 5), &equal);
        assert!(findings.anomalies.is_empty());
        assert_eq!(findings.healthy.len(), 6);
        let one = [c("only", 3.0)];
        let findings = continuous_outlier(&orule(OutlierDirection::Both, 1), &one);
        assert!(findings.anomalies.is_empty());
        assert_eq!(findings.healthy, ["only"]);
        let findings = continuous_outlier(&orule(OutlierDirection::Both, 5), &p99s()[..4]);
        assert!(findings.anomalies.is_empty() && findings.healthy.is_empty());
        assert!(findings.not_enough_data.is_some());
        let mut with_nan = p99s();
        with_nan.push(c("nan", f64::NAN));
        with_nan.push(c("inf", f64::INFINITY));
        let findings = continuous_outlier(&orule(OutlierDirection::Both, 5), &with_nan);
        assert_eq!(names(&findings), ["slow"]);
        assert_eq!(findings.not_judged.len(), 2);
    }

    #[test]
    fn values_are_written_with_four_significant_digits() {
        assert_eq!(fmt_value(0.0275), "0.0275");
        assert_eq!(fmt_value(0.123456), "0.1235");
        assert_eq!(fmt_value(1234.5678), "1235");
        assert_eq!(fmt_value(0.1), "0.1");
        assert_eq!(fmt_value(-0.002), "-0.002");
        assert_eq!(fmt_value(1.5e-7), "1.500e-7");
    }

    /// Per pod, in name order: good, bad, and whether a sample was invalid, summed the
    /// plainest way.
    fn tallied_by_hand(
        values: &ValueList,
        samples: &[DiscreteSample],
    ) -> Vec<(String, f64, f64, bool)> {
        let mut pods: BTreeMap<&str, (f64, f64, bool)> = BTreeMap::new();
        for s in samples {
            let tally = pods.entry(&s.pod).or_default();
            if !s.value.is_finite() || s.value < 0.0 {
                tally.2 = true;
            } else if values.is_good(&s.key) {
                tally.0 += s.value;
            } else {
                tally.1 += s.value;
            }
        }
        pods.into_iter()
            .map(|(pod, (good, bad, invalid))| (pod.to_string(), good, bad, invalid))
            .collect()
    }

    fn samples_of(picks: Vec<(usize, bool, u8)>) -> Vec<DiscreteSample> {
        picks
            .into_iter()
            .map(|(pod, ok, value)| DiscreteSample {
                // Names of many lengths, some sharing long prefixes.
                pod: format!("{}-{pod}", "p".repeat(pod % 13)),
                key: if ok { "200" } else { "500" }.into(),
                value: if value == 255 {
                    f64::NAN
                } else {
                    f64::from(value)
                },
            })
            .collect()
    }

    proptest::proptest! {
        /// The batched table counts every sample to its own pod, whatever the order, the
        /// room given up front (the table grows), and after a `clear`.
        #[test]
        fn tallies_sum_each_pods_samples_as_a_plain_map_does(
            picks in proptest::collection::vec((0usize..300, proptest::bool::ANY, proptest::num::u8::ANY), 0..700),
            room in 0usize..64,
            earlier in proptest::collection::vec((0usize..300, proptest::bool::ANY, proptest::num::u8::ANY), 0..100),
        ) {
            let samples = samples_of(picks);
            let values = good(&["200"]);
            let rule = rule(values.clone(), 50, 1);
            let mut tallies = Tallies::for_discrete(&rule, room);
            for s in &samples_of(earlier) {
                tallies.add(Cow::Owned(s.pod.clone()), &s.key, s.value);
            }
            tallies.clear();
            for s in &samples {
                tallies.add(Cow::Borrowed(&s.pod), &s.key, s.value);
            }
            let got: Vec<(String, f64, f64, bool)> = tallies
                .sorted()
                .into_iter()
                .map(|(pod, t)| (pod.into_owned(), t.good, t.bad, t.invalid.is_some()))
                .collect();
            proptest::prop_assert_eq!(got, tallied_by_hand(&values, &samples));
        }
    }

    #[test]
    fn tallies_keep_the_order_pods_first_appear_in() {
        let values = good(&["200"]);
        let rule = rule(values, 50, 1);
        let mut tallies = Tallies::for_discrete(&rule, 1);
        for (i, pod) in ["c", "a", "c", "b", "a", "d"]
            .into_iter()
            .cycle()
            .take(100)
            .enumerate()
        {
            tallies.add(Cow::Borrowed(pod), "200", i as f64);
        }
        let order: Vec<String> = tallies
            .into_pods()
            .map(|(pod, _)| pod.into_owned())
            .collect();
        assert_eq!(order, ["c", "a", "b", "d"]);
    }
}
