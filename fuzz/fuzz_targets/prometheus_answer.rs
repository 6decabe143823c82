//! The Prometheus HTTP API answer parser: any body, with a success or an error status,
//! read both in full and in one pass for a breaker's rule.
#![no_main]

use kubervisor::source::{Request, findings_from_answer, parse_prometheus_answer};
use kubervisor_api::{Detection, DiscreteRule, ValueList};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let status = if first % 2 == 0 {
        200
    } else {
        400 + u16::from(first % 104)
    };
    let request = Request::Prometheus {
        base: "http://prometheus:9090".into(),
        promql: "up".into(),
    };
    let parsed = parse_prometheus_answer(&request, status, body);
    match &parsed {
        Ok(result) => {
            let _ = format!("{result:?}");
        }
        // Every error renders to a message naming the request.
        Err(error) => assert!(error.to_string().contains("prometheus:9090")),
    }
    let detection = Detection::Discrete(DiscreteRule {
        prometheus_service: "prometheus:9090".into(),
        promql: "up".into(),
        key: "code".into(),
        pod_name_key: "pod".into(),
        values: ValueList::Good(["200".to_string()].into()),
        tolerance_percent: 50,
        min_activity: 1,
    });
    match findings_from_answer(&request, status, body, &detection) {
        // The one-pass reader never accepts what the full parser refuses.
        Ok(_) => assert!(parsed.is_ok(), "judged an answer the full parser refuses"),
        Err(error) => assert!(error.to_string().contains("prometheus:9090")),
    }
});
