//! Manifests in, defaulted objects or field-path errors out.

use kubervisor_api::manifest::{Document, check_documents};
use kubervisor_api::{ActivatorMode, Detection, KubervisorService, ValueList};

/// A manifest in the original operator's format, as users already have them.
const ORIGINAL: &str = r#"
apiVersion: kubervisor.k8s.io/v1alpha1
kind: KubervisorService
metadata:
  name: foo
  namespace: shop
spec:
  service: foo
  breakers:
  - name: http-errors
    evaluationPeriod: 5
    minPodsAvailableCount: 1
    minPodsAvailableRatio: 50
    discreteValueOutOfList:
      prometheusService: prometheus:9090
      promQL: "sum(delta(http_requests_total{namespace=\"foo\"}[1m])) by (pod,code)"
      key: code
      podNamekey: pod
      goodValues: ["200"]
      tolerance: 20
      minActivity: 10
  - name: price
    continuousValueDeviation:
      prometheusService: http://prometheus.monitoring:9090
      promQL: "price_ratio"
      podNamekey: kubernetes_pod_name
      maxDeviationPercent: 30.5
    activator:
      mode: retryAndPause
      period: 30
      maxRetryCount: 2
      maxPauseCount: 1
  - name: custom
    customService: detector.shop:8080/faulty
  defaultActivator:
    mode: periodic
    period: 60
"#;

fn valid(text: &str) -> Vec<KubervisorService> {
    check_documents(text)
        .unwrap()
        .into_iter()
        .map(|d| match d {
            Document::Valid(object) => *object,
            other => panic!("expected a valid document, got {other:?}"),
        })
        .collect()
}

/// The error messages of a single invalid KubervisorService, as `path: message`.
fn errors(text: &str) -> Vec<String> {
    let mut documents = check_documents(text).unwrap();
    assert_eq!(documents.len(), 1);
    match documents.remove(0) {
        Document::Invalid { errors, .. } => errors.iter().map(ToString::to_string).collect(),
        other => panic!("expected an invalid document, got {other:?}"),
    }
}

fn with_breaker(breaker: &str) -> String {
    let indented: String = breaker.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: kubervisor.k8s.io/v1alpha1\nkind: KubervisorService\nmetadata: {{name: web}}\nspec:\n  service: web\n  breakers:\n  - name: ok\n    customService: detector:80\n  -\n{indented}"
    )
}

fn assert_one_error(text: &str, expected: &str) {
    let errors = errors(text);
    assert!(
        errors.iter().any(|e| e == expected),
        "expected {expected:?} among {errors:#?}"
    );
}

#[test]
fn original_format_is_accepted_unchanged_and_defaulted() {
    let objects = valid(ORIGINAL);
    assert_eq!(objects.len(), 1);
    let spec = &objects[0].spec;
    assert_eq!(spec.dry_run, Some(false));
    let custom = &spec.breakers[2];
    assert_eq!(custom.evaluation_period, Some(5.0));
    assert_eq!(custom.min_pods_available_count, Some(1));
    let default = spec.default_activator.as_ref().unwrap();
    assert_eq!(default.period, Some(60.0));
    assert_eq!(default.max_retry_count, Some(3));
    assert_eq!(default.max_pause_count, Some(1));

    let resolved = objects[0].spec.resolve().unwrap();
    let Detection::Discrete(discrete) = &resolved.breakers[0].detection else {
        panic!("discrete expected")
    };
    assert_eq!(discrete.tolerance_percent, 20);
    assert_eq!(discrete.min_activity, 10);
    assert_eq!(discrete.values, ValueList::Good(["200".to_string()].into()));
    assert_eq!(discrete.pod_name_key, "pod");
    let Detection::Continuous(continuous) = &resolved.breakers[1].detection else {
        panic!("continuous expected")
    };
    assert_eq!(continuous.max_deviation_percent, 30.5);
    assert_eq!(
        resolved.activator_for(Some("price")).mode,
        ActivatorMode::RetryAndPause
    );
    assert_eq!(
        resolved.activator_for(Some("custom")).mode,
        ActivatorMode::Periodic
    );
    assert_eq!(resolved.activator_for(None).period.as_secs(), 60);
}

#[test]
fn omitted_fields_get_the_documented_defaults() {
    let text = "apiVersion: kubervisor.k8s.io/v1alpha1\nkind: KubervisorService\nmetadata: {name: web}\nspec:\n  service: web\n  breakers:\n  - name: errors\n    discreteValueOutOfList: {prometheusService: 'p:9090', promQL: q, key: code, podNamekey: pod, badValues: ['500']}\n  - name: price\n    continuousValueDeviation: {prometheusService: 'p:9090', promQL: q, podNamekey: pod}\n";
    let resolved = valid(text)[0].spec.resolve().unwrap();
    let errors = &resolved.breakers[0];
    assert_eq!(errors.evaluation_period.as_secs_f64(), 5.0);
    assert_eq!(errors.min_pods_available_count, 1);
    assert_eq!(errors.min_pods_available_ratio, 0);
    let Detection::Discrete(d) = &errors.detection else {
        panic!()
    };
    assert_eq!((d.tolerance_percent, d.min_activity), (50, 2));
    let Detection::Continuous(c) = &resolved.breakers[1].detection else {
        panic!()
    };
    assert_eq!(c.max_deviation_percent, 75.0);
    let activator = &resolved.default_activator;
    assert_eq!(activator.mode, ActivatorMode::Periodic);
    assert_eq!(activator.period.as_secs_f64(), 10.0);
    assert_eq!(
        (activator.max_retry_count, activator.max_pause_count),
        (3, 1)
    );
    assert!(!resolved.dry_run);
}

#[test]
fn service_name_is_required_and_must_be_a_dns_label() {
    let base = |service: &str| {
        format!(
            "apiVersion: kubervisor.k8s.io/v1alpha1\nkind: KubervisorService\nmetadata: {{name: web}}\nspec:\n  service: {service}\n  breakers:\n  - name: ok\n    customService: d:80\n"
        )
    };
    assert_one_error(&base("''"), "spec.service: required");
    let errors = errors(&base("Web_1"));
    assert!(
        errors[0].starts_with("spec.service: \"Web_1\" is not a DNS-1035 label"),
        "{errors:?}"
    );
}

#[test]
fn at_least_one_breaker_is_required() {
    let text = "apiVersion: kubervisor.k8s.io/v1alpha1\nkind: KubervisorService\nmetadata: {name: web}\nspec: {service: web}\n";
    assert_one_error(text, "spec.breakers: at least one breaker is required");
}

#[test]
fn breaker_names_are_dns_labels_and_unique() {
    assert_one_error(
        &with_breaker("name: ok\ncustomService: d:80"),
        "spec.breakers[1].name: duplicate breaker name \"ok\"",
    );
    let errors = errors(&with_breaker("name: Bad.Name\ncustomService: d:80"));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("spec.breakers[1].name: \"Bad.Name\" is not a DNS-1035 label")),
        "{errors:?}"
    );
    assert_one_error(
        &with_breaker("customService: d:80"),
        "spec.breakers[1].name: required",
    );
}

#[test]
fn exactly_one_detection_method_per_breaker() {
    assert_one_error(
        &with_breaker("name: none"),
        "spec.breakers[1]: one detection method is required: discreteValueOutOfList, continuousValueDeviation, customService, valueThreshold, valueTrend, successRateOutlier, continuousOutlier",
    );
    assert_one_error(
        &with_breaker(
            "name: two\ncustomService: d:80\ncontinuousValueDeviation: {prometheusService: 'p:1', promQL: q, podNamekey: pod}",
        ),
        "spec.breakers[1]: exactly one detection method is allowed among discreteValueOutOfList, continuousValueDeviation, customService, valueThreshold, valueTrend, successRateOutlier, continuousOutlier",
    );
}

#[test]
fn evaluation_period_must_be_above_ten_milliseconds_and_at_most_a_day() {
    for bad in ["0", "0.01", "-5", "86401"] {
        let errors = errors(&with_breaker(&format!(
            "name: p\nevaluationPeriod: {bad}\ncustomService: d:80"
        )));
        assert!(
            errors.iter().any(|e| e.starts_with("spec.breakers[1].evaluationPeriod: must be more than 0.01 and at most 86400 seconds")),
            "{bad}: {errors:?}"
        );
    }
    for ok in ["0.02", "86400", "1"] {
        valid(&with_breaker(&format!(
            "name: p\nevaluationPeriod: {ok}\ncustomService: d:80"
        )));
    }
}

#[test]
fn discrete_needs_its_fields_and_exactly_one_value_list() {
    let errors = errors(&with_breaker(
        "name: d\ndiscreteValueOutOfList: {tolerance: 101}",
    ));
    for expected in [
        "spec.breakers[1].discreteValueOutOfList.prometheusService: required",
        "spec.breakers[1].discreteValueOutOfList.promQL: required",
        "spec.breakers[1].discreteValueOutOfList.key: required",
        "spec.breakers[1].discreteValueOutOfList.podNamekey: required",
        "spec.breakers[1].discreteValueOutOfList.goodValues: one of goodValues or badValues must be non-empty",
        "spec.breakers[1].discreteValueOutOfList.tolerance: must be a percentage between 0 and 100, got 101",
    ] {
        assert!(
            errors.iter().any(|e| e == expected),
            "{expected} not in {errors:#?}"
        );
    }
    assert_one_error(
        &with_breaker(
            "name: d\ndiscreteValueOutOfList: {prometheusService: 'p:1', promQL: q, key: code, podNamekey: pod, goodValues: ['200'], badValues: ['500']}",
        ),
        "spec.breakers[1].discreteValueOutOfList.badValues: only one of goodValues or badValues may be set",
    );
}

#[test]
fn continuous_needs_its_fields_and_a_positive_deviation() {
    let errors = errors(&with_breaker(
        "name: c\ncontinuousValueDeviation: {maxDeviationPercent: 0}",
    ));
    for expected in [
        "spec.breakers[1].continuousValueDeviation.prometheusService: required",
        "spec.breakers[1].continuousValueDeviation.promQL: required",
        "spec.breakers[1].continuousValueDeviation.podNamekey: required",
        "spec.breakers[1].continuousValueDeviation.maxDeviationPercent: must be greater than 0, got 0",
    ] {
        assert!(
            errors.iter().any(|e| e == expected),
            "{expected} not in {errors:#?}"
        );
    }
}

fn assert_errors(text: &str, expected: &[&str]) {
    let errors = errors(text);
    for e in expected {
        assert!(errors.iter().any(|x| x == e), "{e} not in {errors:#?}");
    }
}

const P: &str = "prometheusService: 'p:9090', promQL: q, podNamekey: pod";

#[test]
fn value_threshold_needs_a_bound_and_a_lower_bound_under_the_upper() {
    assert_errors(
        &with_breaker("name: t\nvalueThreshold: {}"),
        &[
            "spec.breakers[1].valueThreshold.prometheusService: required",
            "spec.breakers[1].valueThreshold.promQL: required",
            "spec.breakers[1].valueThreshold.podNamekey: required",
            "spec.breakers[1].valueThreshold: at least one of above, below",
        ],
    );
    assert_one_error(
        &with_breaker(&format!(
            "name: t\nvalueThreshold: {{{P}, above: 0.1, below: 0.2}}"
        )),
        "spec.breakers[1].valueThreshold.below: must be less than above (0.1), or every pod would be anomalous, got 0.2",
    );
    // `.inf` never gets this far: the YAML reader refuses non-finite numbers itself.
    assert!(
        check_documents(&with_breaker(&format!(
            "name: t\nvalueThreshold: {{{P}, above: .inf}}"
        )))
        .is_err()
    );
    let kvs = valid(&with_breaker(&format!(
        "name: t\nvalueThreshold: {{{P}, above: 0.1}}"
    )));
    let spec = kvs[0].spec.resolve().unwrap();
    let Detection::Threshold(rule) = &spec.breakers[1].detection else {
        panic!("{:?}", spec.breakers[1].detection)
    };
    assert_eq!((rule.above, rule.below), (Some(0.1), None));
}

#[test]
fn value_trend_needs_a_window_and_a_slope_bound() {
    assert_errors(
        &with_breaker(&format!("name: t\nvalueTrend: {{{P}}}")),
        &[
            "spec.breakers[1].valueTrend.window: required",
            "spec.breakers[1].valueTrend: at least one of maxSlope, minSlope",
        ],
    );
    assert_one_error(
        &with_breaker(&format!(
            "name: t\nvalueTrend: {{{P}, window: 0, maxSlope: 1}}"
        )),
        "spec.breakers[1].valueTrend.window: must be greater than 0 and at most 604800 seconds, got 0",
    );
    assert_one_error(
        &with_breaker(&format!(
            "name: t\nevaluationPeriod: 10\nvalueTrend: {{{P}, window: 15, minSlope: -1}}"
        )),
        "spec.breakers[1].valueTrend.window: must be at least twice the evaluationPeriod (10 s) so that it holds 3 points, got 15",
    );
    let kvs = valid(&with_breaker(&format!(
        "name: t\nvalueTrend: {{{P}, window: 300, maxSlope: 0.001}}"
    )));
    let spec = kvs[0].spec.resolve().unwrap();
    let Detection::Trend(rule) = &spec.breakers[1].detection else {
        panic!("{:?}", spec.breakers[1].detection)
    };
    assert_eq!(rule.window, std::time::Duration::from_secs(300));
    assert_eq!((rule.max_slope, rule.min_slope), (Some(0.001), None));
}

#[test]
fn success_rate_outlier_gets_envoy_defaults_and_checks_its_fields() {
    assert_errors(
        &with_breaker(&format!(
            "name: s\nsuccessRateOutlier: {{{P}, stdevFactor: 0, minimumHosts: 0}}"
        )),
        &[
            "spec.breakers[1].successRateOutlier.key: required",
            "spec.breakers[1].successRateOutlier.goodValues: one of goodValues or badValues must be non-empty",
            "spec.breakers[1].successRateOutlier.stdevFactor: must be a finite number greater than 0, got 0",
            "spec.breakers[1].successRateOutlier.minimumHosts: must be at least 1",
        ],
    );
    let kvs = valid(&with_breaker(&format!(
        "name: s\nsuccessRateOutlier: {{{P}, key: code, badValues: ['500']}}"
    )));
    let spec = kvs[0].spec.resolve().unwrap();
    let Detection::SuccessRate(rule) = &spec.breakers[1].detection else {
        panic!("{:?}", spec.breakers[1].detection)
    };
    assert_eq!(
        (rule.stdev_factor, rule.minimum_hosts, rule.request_volume),
        (1.9, 5, 100)
    );
    assert!(!rule.values.is_good("500") && rule.values.is_good("200"));
}

#[test]
fn continuous_outlier_gets_defaults_and_a_known_direction() {
    assert_errors(
        &with_breaker(&format!(
            "name: o\ncontinuousOutlier: {{{P}, maxZScore: -1, minDeviationPercent: -5, minimumHosts: 0}}"
        )),
        &[
            "spec.breakers[1].continuousOutlier.maxZScore: must be a finite number greater than 0, got -1",
            "spec.breakers[1].continuousOutlier.minDeviationPercent: must be a finite number of at least 0, got -5",
            "spec.breakers[1].continuousOutlier.minimumHosts: must be at least 1",
        ],
    );
    let errors = errors(&with_breaker(&format!(
        "name: o\ncontinuousOutlier: {{{P}, direction: sideways}}"
    )));
    assert!(
        errors.iter().any(|e| e.contains("direction")),
        "{errors:#?}"
    );
    let kvs = valid(&with_breaker(&format!(
        "name: o\ncontinuousOutlier: {{{P}}}"
    )));
    let spec = kvs[0].spec.resolve().unwrap();
    let Detection::Outlier(rule) = &spec.breakers[1].detection else {
        panic!("{:?}", spec.breakers[1].detection)
    };
    assert_eq!(
        (
            rule.max_z_score,
            rule.min_deviation_percent,
            rule.direction,
            rule.minimum_hosts
        ),
        (3.5, 10.0, kubervisor_api::OutlierDirection::Both, 5)
    );
}

#[test]
fn percents_stay_within_zero_and_one_hundred() {
    assert_one_error(
        &with_breaker("name: r\nminPodsAvailableRatio: 150\ncustomService: d:80"),
        "spec.breakers[1].minPodsAvailableRatio: must be a percentage between 0 and 100, got 150",
    );
    assert_one_error(
        &with_breaker("name: r\nminPodsAvailableRatio: -1\ncustomService: d:80"),
        "spec.breakers[1].minPodsAvailableRatio: invalid value: integer `-1`, expected u32",
    );
}

#[test]
fn activator_mode_must_be_known_and_period_positive() {
    assert_one_error(
        &with_breaker("name: a\ncustomService: d:80\nactivator: {mode: sometimes}"),
        "spec.breakers[1].activator.mode: unknown variant `sometimes`, expected one of `periodic`, `retryAndKill`, `retryAndPause`",
    );
    assert_one_error(
        &with_breaker("name: a\ncustomService: d:80\nactivator: {period: 0}"),
        "spec.breakers[1].activator.period: must be greater than 0 and at most 31536000 seconds, got 0",
    );
    let text = "apiVersion: kubervisor.k8s.io/v1alpha1\nkind: KubervisorService\nmetadata: {name: web}\nspec:\n  service: web\n  breakers: [{name: a, customService: 'd:80'}]\n  defaultActivator: {period: -3}\n";
    assert_one_error(
        text,
        "spec.defaultActivator.period: must be greater than 0 and at most 31536000 seconds, got -3",
    );
}

#[test]
fn unknown_fields_and_wrong_types_name_their_path() {
    assert_one_error(
        &with_breaker("name: u\ncustomService: d:80\nretries: 3"),
        "spec.breakers[1].retries: unknown field",
    );
    assert_one_error(
        &with_breaker("name: u\ncustomService: d:80\nminPodsAvailableCount: many"),
        "spec.breakers[1].minPodsAvailableCount: invalid type: string \"many\", expected u32",
    );
    let text = "apiVersion: kubervisor.k8s.io/v1alpha1\nkind: KubervisorService\nmetadata: {name: web}\nspec: {service: web, breakers: [{name: a, customService: 'd:80'}]}\nstats: {}\n";
    assert_one_error(text, "stats: unknown field");
}

#[test]
fn wrong_api_version_is_rejected_and_other_kinds_are_passed_over() {
    let text = "apiVersion: kubervisor.k8s.io/v1\nkind: KubervisorService\nmetadata: {name: web}\nspec: {}\n";
    assert_one_error(
        text,
        "apiVersion: must be kubervisor.k8s.io/v1alpha1, got \"kubervisor.k8s.io/v1\"",
    );
    let documents =
        check_documents("apiVersion: v1\nkind: Service\nmetadata: {name: web}\n").unwrap();
    assert!(
        matches!(&documents[..], [Document::Other { kind, name }] if kind == "v1/Service" && name == "web")
    );
}

#[test]
fn malformed_yaml_is_one_clear_line() {
    let error = check_documents("spec: [\n").unwrap_err().to_string();
    assert!(!error.contains('\n'), "{error}");
    assert!(error.contains("line 1"), "{error}");
}

#[test]
fn empty_documents_are_ignored() {
    assert!(check_documents("---\n---\n").unwrap().is_empty());
}

#[test]
fn unusable_source_addresses_are_refused_with_the_field_path() {
    for (breaker, expected) in [
        (
            "name: c\ncustomService: ftp://detector/x",
            "spec.breakers[1].customService: unsupported scheme `ftp`, use http:// or https://",
        ),
        (
            "name: d\ndiscreteValueOutOfList: {prometheusService: 'prom:99999', promQL: q, key: code, podNamekey: pod, goodValues: ['200']}",
            "spec.breakers[1].discreteValueOutOfList.prometheusService: invalid port `99999` in `prom:99999`, expected a number up to 65535",
        ),
        (
            "name: v\ncontinuousValueDeviation: {prometheusService: 'http://', promQL: q, podNamekey: pod}",
            "spec.breakers[1].continuousValueDeviation.prometheusService: the host is missing",
        ),
        (
            "name: q\ncontinuousValueDeviation: {prometheusService: 'prom:9090/x?y=1', promQL: q, podNamekey: pod}",
            "spec.breakers[1].continuousValueDeviation.prometheusService: a query string (`?…`) is not allowed, give the base URL only",
        ),
    ] {
        assert_one_error(&with_breaker(breaker), expected);
    }
}
