use std::collections::BTreeSet;
use std::fmt;

use crate::address::Endpoint;
use crate::types::*;

/// One invalid field: its path in the object (`spec.breakers[1].name`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every invalid field of a spec, in document order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

/// Longest evaluation period: one day.
const MAX_EVALUATION_PERIOD: f64 = 24.0 * 3600.0;
/// Shortest evaluation period, exclusive.
const MIN_EVALUATION_PERIOD: f64 = 0.01;
/// Longest `valueTrend.window`: one week.
const MAX_TREND_WINDOW: f64 = 7.0 * 24.0 * 3600.0;
/// The detection methods, as error messages list them.
const METHODS: &str = "discreteValueOutOfList, continuousValueDeviation, customService, valueThreshold, valueTrend, successRateOutlier, continuousOutlier";
/// Longest activator period: one year, so that durations stay representable.
const MAX_ACTIVATOR_PERIOD: f64 = 365.0 * 24.0 * 3600.0;

#[derive(Default)]
struct Collector(Vec<FieldError>);

impl Collector {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn required(&mut self, path: String, value: &str) {
        if value.trim().is_empty() {
            self.error(path, "required");
        }
    }

    /// A required source address that must also parse.
    fn address(
        &mut self,
        path: String,
        value: &str,
        parse: fn(&str) -> Result<Endpoint, crate::address::AddressError>,
    ) {
        if value.trim().is_empty() {
            self.error(path, "required");
        } else if let Err(e) = parse(value) {
            self.error(path, e.reason);
        }
    }

    /// The three fields every Prometheus method shares.
    fn query(&mut self, at: &str, prometheus_service: &str, promql: &str, pod_name_key: &str) {
        self.address(
            format!("{at}.prometheusService"),
            prometheus_service,
            Endpoint::prometheus,
        );
        self.required(format!("{at}.promQL"), promql);
        self.required(format!("{at}.podNamekey"), pod_name_key);
    }

    fn value_lists(&mut self, at: &str, good: &[String], bad: &[String]) {
        match (good.is_empty(), bad.is_empty()) {
            (true, true) => self.error(
                format!("{at}.goodValues"),
                "one of goodValues or badValues must be non-empty",
            ),
            (false, false) => self.error(
                format!("{at}.badValues"),
                "only one of goodValues or badValues may be set",
            ),
            _ => {}
        }
    }

    /// An upper and a lower bound: at least one, finite, the lower under the upper.
    fn bounds(&mut self, at: &str, upper: (&str, Option<f64>), lower: (&str, Option<f64>)) {
        for (field, value) in [upper, lower] {
            if let Some(v) = value.filter(|v| !v.is_finite()) {
                self.error(
                    format!("{at}.{field}"),
                    format!("must be a finite number, got {v}"),
                );
            }
        }
        match (upper.1, lower.1) {
            (None, None) => self.error(
                at.to_string(),
                format!("at least one of {}, {}", upper.0, lower.0),
            ),
            (Some(u), Some(l)) if u.is_finite() && l.is_finite() && l >= u => self.error(
                format!("{at}.{}", lower.0),
                format!(
                    "must be less than {} ({u}), or every pod would be anomalous, got {l}",
                    upper.0
                ),
            ),
            _ => {}
        }
    }

    fn positive(&mut self, path: String, value: Option<f64>) {
        if let Some(v) = value.filter(|v| !(*v > 0.0 && v.is_finite())) {
            self.error(
                path,
                format!("must be a finite number greater than 0, got {v}"),
            );
        }
    }

    fn at_least_one(&mut self, path: String, value: Option<u32>) {
        if value == Some(0) {
            self.error(path, "must be at least 1");
        }
    }

    fn percent(&mut self, path: String, value: Option<u32>) {
        if let Some(v) = value.filter(|v| *v > 100) {
            self.error(
                path,
                format!("must be a percentage between 0 and 100, got {v}"),
            );
        }
    }
}

/// Checks a defaulted spec; see the resource reference for each rule.
pub(crate) fn validate(spec: &KubervisorServiceSpec) -> Result<(), ValidationErrors> {
    let mut c = Collector::default();
    if spec.service.is_empty() {
        c.error("spec.service", "required");
    } else if let Err(why) = dns1035_label(&spec.service) {
        c.error("spec.service", why);
    }
    if spec.breakers.is_empty() {
        c.error("spec.breakers", "at least one breaker is required");
    } else if spec.breakers.len() > crate::crd::MAX_BREAKERS {
        c.error(
            "spec.breakers",
            format!(
                "at most {} breakers, got {}",
                crate::crd::MAX_BREAKERS,
                spec.breakers.len()
            ),
        );
    }
    let mut names = BTreeSet::new();
    for (i, breaker) in spec.breakers.iter().enumerate() {
        let at = format!("spec.breakers[{i}]");
        if breaker.name.is_empty() {
            c.error(format!("{at}.name"), "required");
        } else if let Err(why) = dns1035_label(&breaker.name) {
            c.error(format!("{at}.name"), why);
        } else if !names.insert(breaker.name.as_str()) {
            c.error(
                format!("{at}.name"),
                format!("duplicate breaker name {:?}", breaker.name),
            );
        }
        validate_breaker(&mut c, &at, breaker);
    }
    if let Some(activator) = &spec.default_activator {
        validate_activator(&mut c, "spec.defaultActivator", activator);
    }
    if c.0.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(c.0))
    }
}

fn validate_breaker(c: &mut Collector, at: &str, breaker: &BreakerStrategy) {
    if let Some(period) = breaker.evaluation_period
        && !(period > MIN_EVALUATION_PERIOD && period <= MAX_EVALUATION_PERIOD)
    {
        c.error(
            format!("{at}.evaluationPeriod"),
            format!("must be more than 0.01 and at most 86400 seconds, got {period}"),
        );
    }
    c.percent(
        format!("{at}.minPodsAvailableRatio"),
        breaker.min_pods_available_ratio,
    );
    c.percent(
        format!("{at}.panicThresholdPercent"),
        breaker.panic_threshold_percent,
    );
    if breaker.max_ejections_per_evaluation == Some(0) {
        c.error(
            format!("{at}.maxEjectionsPerEvaluation"),
            "must be at least 1 (omit it for no limit)",
        );
    }
    let methods = [
        breaker.discrete_value_out_of_list.is_some(),
        breaker.continuous_value_deviation.is_some(),
        breaker.custom_service.is_some(),
        breaker.value_threshold.is_some(),
        breaker.value_trend.is_some(),
        breaker.success_rate_outlier.is_some(),
        breaker.continuous_outlier.is_some(),
    ];
    match methods.iter().filter(|m| **m).count() {
        0 => c.error(
            at.to_string(),
            format!("one detection method is required: {METHODS}"),
        ),
        1 => {}
        _ => c.error(
            at.to_string(),
            format!("exactly one detection method is allowed among {METHODS}"),
        ),
    }
    if let Some(d) = &breaker.discrete_value_out_of_list {
        let at = format!("{at}.discreteValueOutOfList");
        c.query(&at, &d.prometheus_service, &d.prom_ql, &d.pod_name_key);
        c.required(format!("{at}.key"), &d.key);
        c.value_lists(&at, &d.good_values, &d.bad_values);
        c.percent(format!("{at}.tolerance"), d.tolerance);
    }
    if let Some(cv) = &breaker.continuous_value_deviation {
        let at = format!("{at}.continuousValueDeviation");
        c.query(&at, &cv.prometheus_service, &cv.prom_ql, &cv.pod_name_key);
        if let Some(max) = cv.max_deviation_percent
            && !(max > 0.0 && max.is_finite())
        {
            c.error(
                format!("{at}.maxDeviationPercent"),
                format!("must be greater than 0, got {max}"),
            );
        }
    }
    if let Some(t) = &breaker.value_threshold {
        let at = format!("{at}.valueThreshold");
        c.query(&at, &t.prometheus_service, &t.prom_ql, &t.pod_name_key);
        c.bounds(&at, ("above", t.above), ("below", t.below));
    }
    if let Some(t) = &breaker.value_trend {
        let at = format!("{at}.valueTrend");
        c.query(&at, &t.prometheus_service, &t.prom_ql, &t.pod_name_key);
        match t.window {
            None => c.error(format!("{at}.window"), "required"),
            Some(w) if !(w > 0.0 && w <= MAX_TREND_WINDOW) => c.error(
                format!("{at}.window"),
                format!("must be greater than 0 and at most 604800 seconds, got {w}"),
            ),
            Some(w) => {
                // The range query's step is at least the evaluation period.
                let period = breaker
                    .evaluation_period
                    .unwrap_or(crate::DEFAULT_EVALUATION_PERIOD);
                if w < 2.0 * period {
                    c.error(
                        format!("{at}.window"),
                        format!(
                            "must be at least twice the evaluationPeriod ({period} s) so that it holds 3 points, got {w}"
                        ),
                    );
                }
            }
        }
        c.bounds(&at, ("maxSlope", t.max_slope), ("minSlope", t.min_slope));
    }
    if let Some(r) = &breaker.success_rate_outlier {
        let at = format!("{at}.successRateOutlier");
        c.query(&at, &r.prometheus_service, &r.prom_ql, &r.pod_name_key);
        c.required(format!("{at}.key"), &r.key);
        c.value_lists(&at, &r.good_values, &r.bad_values);
        c.positive(format!("{at}.stdevFactor"), r.stdev_factor);
        c.at_least_one(format!("{at}.minimumHosts"), r.minimum_hosts);
    }
    if let Some(o) = &breaker.continuous_outlier {
        let at = format!("{at}.continuousOutlier");
        c.query(&at, &o.prometheus_service, &o.prom_ql, &o.pod_name_key);
        c.positive(format!("{at}.maxZScore"), o.max_z_score);
        if let Some(min) = o.min_deviation_percent
            && !(min >= 0.0 && min.is_finite())
        {
            c.error(
                format!("{at}.minDeviationPercent"),
                format!("must be a finite number of at least 0, got {min}"),
            );
        }
        c.at_least_one(format!("{at}.minimumHosts"), o.minimum_hosts);
    }
    if let Some(url) = &breaker.custom_service {
        c.address(format!("{at}.customService"), url, Endpoint::custom);
    }
    if let Some(activator) = &breaker.activator {
        validate_activator(c, &format!("{at}.activator"), activator);
    }
}

fn validate_activator(c: &mut Collector, at: &str, activator: &ActivatorStrategy) {
    if let Some(period) = activator.period
        && !(period > 0.0 && period <= MAX_ACTIVATOR_PERIOD)
    {
        c.error(
            format!("{at}.period"),
            format!("must be greater than 0 and at most 31536000 seconds, got {period}"),
        );
    }
    for (field, value) in [
        ("forgetAfter", activator.forget_after),
        ("maxEjectionTime", activator.max_ejection_time),
    ] {
        if let Some(seconds) = value
            && !(seconds > 0.0 && seconds <= MAX_ACTIVATOR_PERIOD)
        {
            c.error(
                format!("{at}.{field}"),
                format!("must be greater than 0 and at most 31536000 seconds, got {seconds}"),
            );
        }
    }
}

/// Checks a DNS-1035 label, as Kubernetes does for Service names.
fn dns1035_label(value: &str) -> Result<(), String> {
    let valid = value.len() <= 63
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && !value.ends_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a DNS-1035 label: at most 63 lower-case letters, digits or '-', starting with a letter and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1035_accepts_ordinary_names_and_rejects_the_rest() {
        for ok in ["web", "a", "error-rate", "a1-b2"] {
            assert!(dns1035_label(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "1web", "Web", "web-", "we_b", "web.svc", long.as_str()] {
            assert!(dns1035_label(bad).is_err(), "{bad}");
        }
    }
}
