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
    ];
    match methods.iter().filter(|m| **m).count() {
        0 => c.error(
            at.to_string(),
            "one detection method is required: discreteValueOutOfList, continuousValueDeviation or customService",
        ),
        1 => {}
        _ => c.error(
            at.to_string(),
            "exactly one detection method is allowed among discreteValueOutOfList, continuousValueDeviation and customService",
        ),
    }
    if let Some(d) = &breaker.discrete_value_out_of_list {
        let at = format!("{at}.discreteValueOutOfList");
        c.address(
            format!("{at}.prometheusService"),
            &d.prometheus_service,
            Endpoint::prometheus,
        );
        c.required(format!("{at}.promQL"), &d.prom_ql);
        c.required(format!("{at}.key"), &d.key);
        c.required(format!("{at}.podNamekey"), &d.pod_name_key);
        match (d.good_values.is_empty(), d.bad_values.is_empty()) {
            (true, true) => c.error(
                format!("{at}.goodValues"),
                "one of goodValues or badValues must be non-empty",
            ),
            (false, false) => c.error(
                format!("{at}.badValues"),
                "only one of goodValues or badValues may be set",
            ),
            _ => {}
        }
        c.percent(format!("{at}.tolerance"), d.tolerance);
    }
    if let Some(cv) = &breaker.continuous_value_deviation {
        let at = format!("{at}.continuousValueDeviation");
        c.address(
            format!("{at}.prometheusService"),
            &cv.prometheus_service,
            Endpoint::prometheus,
        );
        c.required(format!("{at}.promQL"), &cv.prom_ql);
        c.required(format!("{at}.podNamekey"), &cv.pod_name_key);
        if let Some(max) = cv.max_deviation_percent
            && !(max > 0.0 && max.is_finite())
        {
            c.error(
                format!("{at}.maxDeviationPercent"),
                format!("must be greater than 0, got {max}"),
            );
        }
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
