use super::*;
use serde_json::json;

/// A hand encoder for test bodies: each helper returns one encoded field.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn int(n: u32, v: i64) -> Vec<u8> {
    let mut out = varint(u64::from(n) << 3);
    out.extend(varint(v as u64));
    out
}

fn len(n: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = varint((u64::from(n) << 3) | 2);
    out.extend(varint(bytes.len() as u64));
    out.extend_from_slice(bytes);
    out
}

fn msg(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn map_entry(n: u32, key: &str, value: &[u8]) -> Vec<u8> {
    len(n, &msg(&[len(1, key.as_bytes()), len(2, value)]))
}

fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let type_meta = msg(&[len(1, api_version.as_bytes()), len(2, kind.as_bytes())]);
    let mut body = b"k8s\0".to_vec();
    body.extend(msg(&[len(1, &type_meta), len(2, raw)]));
    body
}

/// ObjectMeta as Go writes it: every plain string and number present, even when empty.
fn object_meta(name: &str, labels: &[(&str, &str)]) -> Vec<u8> {
    let mut parts = vec![
        len(1, name.as_bytes()),
        len(2, b""),
        len(3, b""),
        len(6, b""),
        int(7, 0),
        len(8, &[]),
    ];
    for (k, v) in labels {
        parts.push(map_entry(11, k, v.as_bytes()));
    }
    msg(&parts)
}

#[test]
fn a_deployment_decodes_to_the_json_kubectl_would_send() {
    let container = msg(&[
        len(1, b"web"),
        len(2, b"nginx:1"),
        len(6, &msg(&[int(3, 8080), len(4, b"TCP")])),
        len(8, &msg(&[map_entry(1, "cpu", &len(1, b"100m"))])),
        int(16, 0), // stdin: false, a plain bool, is left out
    ]);
    let pod_spec = msg(&[len(2, &container)]);
    let template = msg(&[
        len(1, &object_meta("", &[("app", "web")])),
        len(2, &pod_spec),
    ]);
    let selector = msg(&[map_entry(1, "app", b"web")]);
    let spec = msg(&[
        int(1, 0), // replicas: 0, a pointer, is kept
        len(2, &selector),
        len(3, &template),
        len(4, &[]),
    ]);
    let deployment = msg(&[
        len(1, &object_meta("web", &[("app", "web")])),
        len(2, &spec),
        len(3, &[]),
    ]);
    let got = decode_object(&envelope("apps/v1", "Deployment", &deployment)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{
                        "name": "web",
                        "image": "nginx:1",
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "resources": {"limits": {"cpu": "100m"}},
                    }]},
                },
                "strategy": {},
            },
            "status": {},
        })
    );
}

#[test]
fn special_types_take_their_json_forms() {
    let port = |target: Vec<u8>| msg(&[int(3, 80), len(4, &target)]);
    let service = msg(&[
        len(1, &object_meta("web", &[])),
        len(
            2,
            &msg(&[
                len(1, &port(msg(&[int(1, 1), len(3, b"http")]))),
                len(1, &port(msg(&[int(1, 0), int(2, 8080)]))),
                len(1, &port(msg(&[int(1, 0), int(2, 0)]))),
            ]),
        ),
    ]);
    let got = decode_object(&envelope("v1", "Service", &service)).unwrap();
    assert_eq!(
        got["spec"]["ports"],
        json!([
            {"port": 80, "targetPort": "http"},
            {"port": 80, "targetPort": 8080},
            {"port": 80},
        ])
    );

    let secret = msg(&[
        len(1, &object_meta("s", &[])),
        map_entry(2, "password", b"hunter2"),
        len(3, b"Opaque"),
    ]);
    let got = decode_object(&envelope("v1", "Secret", &secret)).unwrap();
    assert_eq!(got["data"], json!({"password": "aHVudGVyMg=="}));
    assert_eq!(got["type"], "Opaque");

    // deletionTimestamp (field 9) is a Time; eventTime of an Event a MicroTime.
    let meta = msg(&[len(1, b"e"), len(9, &msg(&[int(1, 1_700_000_000)]))]);
    let event = msg(&[
        len(1, &meta),
        len(10, &msg(&[int(1, 1_700_000_000), int(2, 123_456_789)])),
    ]);
    let got = decode_object(&envelope("v1", "Event", &event)).unwrap();
    assert_eq!(got["metadata"]["deletionTimestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(got["eventTime"], "2023-11-14T22:13:20.123456Z");
}

#[test]
fn inlined_structs_merge_into_their_parent() {
    // Probe.handler (1) is inlined; ProbeHandler.httpGet is field 2.
    let probe = msg(&[
        len(1, &msg(&[len(2, &msg(&[len(1, b"/healthz")]))])),
        int(4, 5),
    ]);
    let container = msg(&[len(1, b"c"), len(10, &probe)]);
    let pod = msg(&[
        len(1, &object_meta("p", &[])),
        len(2, &msg(&[len(2, &container)])),
    ]);
    let got = decode_object(&envelope("v1", "Pod", &pod)).unwrap();
    assert_eq!(
        got["spec"]["containers"][0]["livenessProbe"],
        json!({"httpGet": {"path": "/healthz"}, "periodSeconds": 5})
    );
}

#[test]
fn bad_bodies_are_errors_that_name_the_problem() {
    assert!(matches!(
        decode_object(b"{\"kind\":\"Pod\"}"),
        Err(DecodeError::NoMagic)
    ));
    let unknown_field = msg(&[len(1, &object_meta("n", &[])), int(99, 1)]);
    let err = decode_object(&envelope("v1", "Namespace", &unknown_field)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Namespace: unknown field number 99 of api.core.v1.Namespace"
    );
    let err = decode_object(&envelope("example.io/v1", "Widget", &[])).unwrap_err();
    assert!(matches!(err, DecodeError::UnknownKind { .. }), "{err}");
    let mut truncated = envelope("v1", "Namespace", &object_meta("n", &[]));
    truncated.truncate(truncated.len() - 3);
    assert!(decode_object(&truncated).is_err());
    let wrong_wire = msg(&[len(1, &msg(&[int(1, 5)]))]);
    let err = decode_object(&envelope("v1", "Namespace", &wrong_wire)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Namespace.metadata.name: wire type Varint cannot hold a String value"
    );
}

#[test]
fn decoding_arbitrary_bytes_never_panics() {
    // A cheap fuzz: every prefix and every single-byte corruption of a valid body.
    let body = envelope(
        "apps/v1",
        "Deployment",
        &msg(&[
            len(1, &object_meta("web", &[("a", "b")])),
            len(2, &msg(&[int(1, 3)])),
        ]),
    );
    for cut in 0..body.len() {
        let _ = decode_object(&body[..cut]);
    }
    for i in 0..body.len() {
        for b in [0x00, 0x02, 0x7f, 0x80, 0xff] {
            let mut corrupt = body.clone();
            corrupt[i] = b;
            let _ = decode_object(&corrupt);
        }
    }
}
