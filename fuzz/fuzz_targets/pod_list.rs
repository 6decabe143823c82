//! A custom detector's `PodList` answer: any body gives pod names or an error.
#![no_main]

use kubervisor::source::{Request, parse_custom_answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let request = Request::Custom {
        url: "http://detector:8080/faulty".into(),
    };
    match parse_custom_answer(&request, data) {
        Ok(names) => assert!(names.iter().all(|n| !n.is_empty())),
        Err(error) => assert!(error.to_string().contains("detector:8080")),
    }
});
