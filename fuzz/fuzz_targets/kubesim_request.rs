//! kubesim's request decoding: protobuf bodies as kubectl sends them, and patch bodies of
//! every kind applied to a pod.
#![no_main]

use kubesim::patch::{PatchKind, apply, parse_body};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    match first % 5 {
        0 => {
            let _ = kubesim::protobuf::decode_object(body);
        }
        n => {
            let kind = [
                PatchKind::Json,
                PatchKind::Merge,
                PatchKind::Strategic,
                PatchKind::Apply,
            ][usize::from(n - 1)];
            if let Ok(patch) = parse_body(kind, body) {
                let mut pod = json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "p", "labels": {"app": "web"}, "annotations": {}},
                    "spec": {"containers": [{"name": "app", "image": "x"}]},
                    "status": {"conditions": [{"type": "Ready", "status": "True"}]},
                });
                let _ = apply(kind, &mut pod, &patch);
            }
        }
    }
});
