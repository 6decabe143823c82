//! The one-pass reader against the full parser: same findings, same errors, on random
//! answers with escapes, missing and extra labels, non-finite values and error bodies.

use kubervisor_api::{OutlierDirection, OutlierRule, SuccessRateRule, ThresholdRule, ValueList};
use proptest::prelude::*;

use super::*;

fn request() -> Request {
    Request::Prometheus {
        base: "http://prom:9090".into(),
        promql: "q".into(),
    }
}

/// A label name as written in JSON, and the name it decodes to.
const NAMES: &[(&str, &str)] = &[
    ("pod", "pod"),
    ("code", "code"),
    ("instance", "instance"),
    ("job", "job"),
    (r"po\u0064", "pod"),
    (r"c\u006fde", "code"),
    (r#"j\"ob"#, "j\"ob"),
];

/// Label values as written in JSON: plain, escaped, and escaped spellings of plain ones.
const VALUES: &[&str] = &[
    "a",
    "b",
    "c",
    r#"a\"b"#,
    r"\u00e9",
    "é",
    r"x\\y",
    "200",
    "500",
    "404",
    r"2\u00300",
];

/// Sample values: (as written, whether Prometheus' spelling of a number).
const SAMPLES: &[(&str, bool)] = &[
    ("1", true),
    ("2.5", true),
    ("1e3", true),
    ("0", true),
    ("-3", true),
    ("NaN", true),
    ("+Inf", true),
    ("-Inf", true),
    ("Inf", true),
    ("nan", false),
    ("abc", false),
    ("1e400", false),
];

/// Sample times: (as written, whether a JSON number).
const TIMES: &[(&str, bool)] = &[
    ("1", true),
    ("1.5", true),
    ("1700000000.123", true),
    ("1015", true),
    ("-0.5", true),
    ("1e3", true),
    ("\"1\"", false),
    ("1e400", false),
    ("01", false),
    ("1.", false),
];

/// A piece of JSON and whether the reader must vouch for it (nothing unusual in it).
type Part = (String, bool);

/// A `[time, "value"]` pair, rarely one the full parser refuses.
fn point() -> impl Strategy<Value = Part> {
    let good = |all: &[(&str, bool)]| (0..all.len()).filter(|&i| all[i].1).collect::<Vec<_>>();
    let index = |all: &'static [(&'static str, bool)]| {
        prop_oneof![
            40 => prop::sample::select(good(all)),
            1 => 0..all.len(),
        ]
    };
    (index(TIMES), index(SAMPLES)).prop_map(|(t, v)| {
        let (time, time_ok) = TIMES[t];
        let (value, value_ok) = SAMPLES[v];
        (format!("[{time},\"{value}\"]"), time_ok && value_ok)
    })
}

/// The data of a vector series (its `value` field).
fn value_field() -> impl Strategy<Value = Part> {
    prop_oneof![
        60 => point().prop_map(|(p, ok)| (format!(r#""value":{p}"#), ok)),
        1 => Just((r#""value":null"#.to_string(), false)),
        1 => Just((r#""value":[1,"2",3]"#.to_string(), false)),
        1 => Just((r#""histogram":[1,{"count":"2"}]"#.to_string(), false)),
    ]
}

/// The data of a matrix series (its `values` field).
fn values_field() -> impl Strategy<Value = Part> {
    prop_oneof![
        60 => prop::collection::vec(point(), 0..5).prop_map(|points| {
            let ok = points.iter().all(|(_, ok)| *ok);
            let text: Vec<String> = points.into_iter().map(|(p, _)| p).collect();
            (format!(r#""values":[{}]"#, text.join(",")), ok)
        }),
        // No `values` at all is an empty series to both.
        3 => Just((r#""histograms":[]"#.to_string(), true)),
        1 => Just((r#""values":null"#.to_string(), false)),
    ]
}

/// Whether a name or value is written without escapes (the compact reader's answers).
fn plain(raw: &str) -> bool {
    !raw.contains('\\')
}

/// One series; `key` is the key label the rule needs, if any; `escapes` allows them.
fn series(
    matrix: bool,
    pod_label: &'static str,
    key: Option<&'static str>,
    escapes: bool,
) -> BoxedStrategy<Part> {
    let names: Vec<usize> = (0..NAMES.len())
        .filter(|&i| escapes || plain(NAMES[i].0))
        .collect();
    let values: Vec<usize> = (0..VALUES.len())
        .filter(|&i| escapes || plain(VALUES[i]))
        .collect();
    let name = prop::sample::select(names);
    let value = prop::sample::select(values);
    let data = if matrix {
        values_field().boxed()
    } else {
        value_field().boxed()
    };
    (
        prop::collection::vec((name, value.clone()), 0..4),
        prop::option::weighted(0.99, value.clone()),
        prop::option::weighted(0.99, value),
        data,
        any::<bool>(),
        prop_oneof![
            40 => Just(""),
            4 => Just(r#","extra":{"a":[1,"é"]}"#),
            1 => Just(r#","metric":{}"#),
        ],
    )
        .prop_map(
            move |(extra, pod, code, (data, data_ok), labels_first, other)| {
                let mut labels: Vec<(&str, &str, &str)> = Vec::new();
                if let Some(v) = pod {
                    labels.push(("pod", "pod", VALUES[v]));
                }
                if let Some(v) = code {
                    labels.push(("code", "code", VALUES[v]));
                }
                labels.extend(
                    extra
                        .iter()
                        .map(|&(n, v)| (NAMES[n].0, NAMES[n].1, VALUES[v])),
                );
                let has = |label: &str| labels.iter().any(|(_, name, _)| *name == label);
                let labels_ok = has(pod_label) && key.is_none_or(has);
                let text: Vec<String> = labels
                    .iter()
                    .map(|(raw, _, value)| format!("\"{raw}\":\"{value}\""))
                    .collect();
                let metric = format!(r#""metric":{{{}}}"#, text.join(","));
                let body = if labels_first {
                    format!("{{{metric},{data}{other}}}")
                } else {
                    format!("{{{data},{metric}{other}}}")
                };
                // A second `metric` is refused by the full parser.
                (body, labels_ok && data_ok && !other.contains("metric"))
            },
        )
        .boxed()
}

/// A whole answer for a rule reading `matrix` or vector results: (HTTP status, body, clean).
fn answer(
    matrix: bool,
    pod_label: &'static str,
    key: Option<&'static str>,
) -> impl Strategy<Value = (u16, String, bool)> {
    let result_type = if matrix { "matrix" } else { "vector" };
    let other_type = if matrix { "vector" } else { "matrix" };
    let result = any::<bool>()
        .prop_flat_map(move |escapes| {
            prop::collection::vec(series(matrix, pod_label, key, escapes), 0..12)
        })
        .prop_map(|all| {
            let ok = all.iter().all(|(_, ok)| *ok);
            let text: Vec<String> = all.into_iter().map(|(s, _)| s).collect();
            (format!("[{}]", text.join(",")), ok)
        });
    let body = (result, 0..22u8).prop_map(move |((result, ok), shape)| match shape {
        0..=11 => (
            format!(r#"{{"status":"success","data":{{"resultType":"{result_type}","result":{result}}}}}"#),
            ok,
        ),
        12..=14 => (
            format!(r#"{{"data":{{"resultType":"{result_type}","result":{result}}},"warnings":["w"],"status":"success"}}"#),
            ok,
        ),
        15 => (
            format!(r#"{{"status":"success","data":{{"result":{result},"resultType":"{result_type}"}}}}"#),
            ok,
        ),
        16 => (
            format!(r#"{{"status":"success","data":{{"resultType":"{other_type}","result":{result}}}}}"#),
            false,
        ),
        // A field given twice.
        19 => (
            format!(r#"{{"status":"success","data":{{"resultType":"{result_type}","result":{result}}},"status":"success"}}"#),
            false,
        ),
        // The type after a result of the other shape.
        17 => (
            format!(r#"{{"status":"success","data":{{"result":{result},"resultType":"{other_type}"}}}}"#),
            false,
        ),
        18 => (
            r#"{"status":"error","errorType":"bad_data","error":"parse error: \"x\""}"#.to_string(),
            false,
        ),
        _ => (
            r#"{"status":"success","data":{"resultType":"scalar","result":[1,"3"]}}"#.to_string(),
            false,
        ),
    });
    let status = prop::sample::select(vec![200u16, 200, 200, 200, 200, 200, 200, 200, 400, 503]);
    (body, status, any::<prop::sample::Index>(), 0..20u8).prop_map(
        |((body, ok), status, cut, truncate)| {
            if truncate == 0 && !body.is_empty() {
                let mut at = cut.index(body.len());
                while !body.is_char_boundary(at) {
                    at -= 1;
                }
                return (status, body[..at].to_string(), false);
            }
            (status, body, ok && status == 200)
        },
    )
}

fn values() -> ValueList {
    ValueList::Good(["200".to_string()].into())
}

/// The detections judged from Prometheus answers, with random thresholds.
fn detection() -> impl Strategy<Value = Detection> {
    let base = || ("p:9090".to_string(), "q".to_string(), "pod".to_string());
    prop_oneof![
        (0..100u32, 0..5u32).prop_map(move |(tolerance_percent, min_activity)| {
            let (prometheus_service, promql, pod_name_key) = base();
            Detection::Discrete(DiscreteRule {
                prometheus_service,
                promql,
                pod_name_key,
                key: "code".into(),
                values: values(),
                tolerance_percent,
                min_activity,
            })
        }),
        (0.5..3.0f64, 1..4u32, 0..5u32).prop_map(
            move |(stdev_factor, minimum_hosts, request_volume)| {
                let (prometheus_service, promql, pod_name_key) = base();
                Detection::SuccessRate(SuccessRateRule {
                    prometheus_service,
                    promql,
                    pod_name_key,
                    key: "code".into(),
                    values: values(),
                    stdev_factor,
                    minimum_hosts,
                    request_volume,
                })
            }
        ),
        (0.0..200.0f64).prop_map(move |max_deviation_percent| {
            let (prometheus_service, promql, pod_name_key) = base();
            Detection::Continuous(ContinuousRule {
                prometheus_service,
                promql,
                pod_name_key,
                max_deviation_percent,
            })
        }),
        (
            prop::option::of(-5.0..5.0f64),
            prop::option::of(-5.0..5.0f64)
        )
            .prop_map(move |(above, below)| {
                let (prometheus_service, promql, pod_name_key) = base();
                Detection::Threshold(ThresholdRule {
                    prometheus_service,
                    promql,
                    pod_name_key,
                    above,
                    below,
                })
            }),
        (0.5..5.0f64, 0.0..20.0f64, 1..4u32).prop_map(
            move |(max_z_score, min_deviation_percent, minimum_hosts)| {
                let (prometheus_service, promql, pod_name_key) = base();
                Detection::Outlier(OutlierRule {
                    prometheus_service,
                    promql,
                    pod_name_key,
                    max_z_score,
                    min_deviation_percent,
                    direction: OutlierDirection::Both,
                    minimum_hosts,
                })
            }
        ),
        (
            prop::option::of(-1.0..1.0f64),
            prop::option::of(-1.0..1.0f64)
        )
            .prop_map(move |(max_slope, min_slope)| {
                let (prometheus_service, promql, pod_name_key) = base();
                Detection::Trend(TrendRule {
                    prometheus_service,
                    promql,
                    pod_name_key,
                    window: Duration::from_secs(300),
                    max_slope,
                    min_slope,
                })
            }),
    ]
}

fn case() -> impl Strategy<Value = (Detection, (u16, String, bool))> {
    detection().prop_flat_map(|detection| {
        let matrix = matches!(detection, Detection::Trend(_));
        let key = match detection {
            Detection::Discrete(_) | Detection::SuccessRate(_) => Some("code"),
            _ => None,
        };
        (Just(detection), answer(matrix, "pod", key))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_one_pass_reader_agrees_with_the_full_parser(
        (detection, (status, body, clean)) in case()
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let reference = judge_parsed(&request(), status, body.as_bytes(), &detection);
        let one_pass = judge_in_one_pass(status, body.as_bytes(), &detection);
        if clean {
            prop_assert!(one_pass.is_some(), "the reader gave up on a clean answer: {}", body);
        }
        if let Some(findings) = &one_pass {
            // Debug text, so that NaN compares equal to itself.
            let reference = reference.as_ref().map(|f| format!("{f:?}"));
            prop_assert_eq!(Ok(format!("{findings:?}")), reference, "{}", body);
        }
        let entry = findings_from_answer(&request(), status.as_u16(), body.as_bytes(), &detection);
        prop_assert_eq!(
            entry.map(|f| format!("{f:?}")),
            reference.map(|f| format!("{f:?}")),
            "{}",
            body
        );
    }
}

#[test]
fn labels_are_read_through_escapes_and_the_rest_is_ignored() {
    let body = r#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"c\u006fde":"500","instance":"x:1","po\u0064":"web-\"1\""},"value":[1,"80"]},
        {"value":[1,"20"],"metric":{"pod":"web-\"1\"","code":"2\u00300","job":"j"}},
        {"metric":{"pod":"web-2","code":"200"},"value":[1.5,"NaN"]}]}}"#;
    let detection = Detection::Discrete(DiscreteRule {
        prometheus_service: "p:9090".into(),
        promql: "q".into(),
        key: "code".into(),
        pod_name_key: "pod".into(),
        values: values(),
        tolerance_percent: 50,
        min_activity: 1,
    });
    let findings = judge_in_one_pass(StatusCode::OK, body.as_bytes(), &detection).unwrap();
    assert_eq!(findings.anomalies.len(), 1);
    assert_eq!(findings.anomalies[0].pod, "web-\"1\"");
    assert_eq!(findings.not_judged[0].0, "web-2");
    assert_eq!(
        Ok(findings),
        judge_parsed(&request(), StatusCode::OK, body.as_bytes(), &detection)
    );
}

#[test]
fn errors_come_from_the_full_parser_naming_the_series_and_the_field() {
    let detection = Detection::Discrete(DiscreteRule {
        prometheus_service: "p:9090".into(),
        promql: "q".into(),
        key: "code".into(),
        pod_name_key: "pod".into(),
        values: values(),
        tolerance_percent: 50,
        min_activity: 1,
    });
    let judge = |body: &str| {
        findings_from_answer(&request(), 200, body.as_bytes(), &detection).unwrap_err()
    };
    let missing = judge(
        r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"pod":"a","instance":"x:1"},"value":[1,"3"]}]}}"#,
    );
    assert_eq!(
        missing.to_string(),
        "series {instance=\"x:1\", pod=\"a\"} of query `q` to Prometheus http://prom:9090 has no label `code` (the breaker's key); keep it in the query's `by (…)` clause"
    );
    let not_a_number = judge(
        r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"pod":"a","code":"200"},"value":[1,"nan"]}]}}"#,
    );
    assert_eq!(not_a_number.kind(), "decode");
    assert!(
        not_a_number
            .to_string()
            .contains(r#"sample value "nan" is not a number"#)
    );
    let histogram = judge(
        r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"pod":"a","code":"200"},"histogram":[1,{"count":"2"}]}]}}"#,
    );
    assert!(
        histogram
            .to_string()
            .contains(r#"series {code="200", pod="a"} has no float value"#),
        "{histogram}"
    );
}

#[test]
fn answers_written_with_sorted_keys_are_read_in_one_pass() {
    // serde_json's own writer sorts keys: the result comes before its type.
    let body = serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"code": "500", "pod": "a"}, "value": [1, "9"]},
        {"metric": {"code": "200", "pod": "a"}, "value": [1, "1"]},
    ]}})
    .to_string();
    assert!(body.starts_with(r#"{"data":{"result":"#), "{body}");
    let detection = Detection::Discrete(DiscreteRule {
        prometheus_service: "p:9090".into(),
        promql: "q".into(),
        key: "code".into(),
        pod_name_key: "pod".into(),
        values: values(),
        tolerance_percent: 50,
        min_activity: 1,
    });
    let findings = judge_in_one_pass(StatusCode::OK, body.as_bytes(), &detection).unwrap();
    assert_eq!(findings.anomalies[0].pod, "a");
}
