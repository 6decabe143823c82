//! The Prometheus HTTP API answer parser: any body, with a success or an error status.
#![no_main]

use kubervisor::source::{Request, parse_prometheus_answer};
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
    match parse_prometheus_answer(&request, status, body) {
        Ok(result) => {
            let _ = format!("{result:?}");
        }
        // Every error renders to a message naming the request.
        Err(error) => assert!(error.to_string().contains("prometheus:9090")),
    }
});
