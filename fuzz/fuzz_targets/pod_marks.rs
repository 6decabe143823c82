//! The pod contract: any labels and annotations read as Kubervisor's marks, in both
//! traffic control modes, and judged as the breaker judges a pod.
#![no_main]

use std::collections::BTreeMap;

use kubervisor_api::pod::{MarksIn, PodMarks, Traffic};
use kubervisor_core::PodView;
use libfuzzer_sys::fuzz_target;

/// `key=value` lines; a 0xff byte separates the labels from the annotations.
fn maps(data: &[u8]) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut parts = data.splitn(2, |b| *b == 0xff);
    let read = |part: Option<&[u8]>| {
        String::from_utf8_lossy(part.unwrap_or_default())
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    (read(parts.next()), read(parts.next()))
}

fuzz_target!(|data: &[u8]| {
    let (labels, annotations) = maps(data);
    for marks_in in [MarksIn::Labels, MarksIn::Annotations] {
        let marks = PodMarks::read_in(marks_in, Some(&labels), Some(&annotations));
        let unknown = marks.unknown_reason();
        let view = PodView {
            name: "p".into(),
            running: true,
            ready: true,
            terminating: false,
            marks: marks.clone(),
        };
        // Only a pod whose marks read `yes` may be ejected, and never one of unknown state.
        if view.not_a_candidate().is_none() {
            assert_eq!(marks.traffic(), Some(Traffic::Yes));
            assert!(unknown.is_none());
        }
        if unknown.is_none() {
            assert!(marks.traffic().is_some());
        }
    }
});
