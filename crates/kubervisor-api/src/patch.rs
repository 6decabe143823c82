//! Typed JSON Patch (RFC 6902) operations on the pod contract's labels and annotations,
//! shared by the operator and the plugin, so JSON-pointer escaping lives in one place.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation, TestOperation};
use serde_json::Value;

/// `/metadata/labels/<key>`, with `/` and `~` in the key escaped.
pub fn label(key: &str) -> PointerBuf {
    PointerBuf::from_tokens(["metadata", "labels", key])
}

/// `/metadata/annotations/<key>`, escaped like [`label`].
pub fn annotation(key: &str) -> PointerBuf {
    PointerBuf::from_tokens(["metadata", "annotations", key])
}

/// A pointer from plain (unescaped) tokens, such as `["spec", "selector", key]`.
pub fn path<'a>(tokens: impl IntoIterator<Item = &'a str>) -> PointerBuf {
    PointerBuf::from_tokens(tokens)
}

/// Fails the whole patch unless `path` holds `value`: the precondition of every write.
pub fn test(path: PointerBuf, value: impl Into<Value>) -> PatchOperation {
    PatchOperation::Test(TestOperation {
        path,
        value: value.into(),
    })
}

pub fn add(path: PointerBuf, value: impl Into<Value>) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path,
        value: value.into(),
    })
}

pub fn replace(path: PointerBuf, value: impl Into<Value>) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation {
        path,
        value: value.into(),
    })
}

pub fn remove(path: PointerBuf) -> PatchOperation {
    PatchOperation::Remove(RemoveOperation { path })
}

/// Tests that the object is still at the resourceVersion it was read at.
pub fn test_resource_version(resource_version: &str) -> PatchOperation {
    test(path(["metadata", "resourceVersion"]), resource_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_as_json_pointers() {
        assert_eq!(
            label("kubervisor/traffic").as_str(),
            "/metadata/labels/kubervisor~1traffic"
        );
        assert_eq!(
            annotation("a~b/c").as_str(),
            "/metadata/annotations/a~0b~1c"
        );
    }

    #[test]
    fn operations_serialize_as_rfc_6902() {
        let ops = json_patch::Patch(vec![
            test(label("kubervisor/traffic"), "yes"),
            remove(annotation("breaker/breakAt")),
        ]);
        assert_eq!(
            serde_json::to_value(&ops).unwrap(),
            serde_json::json!([
                {"op": "test", "path": "/metadata/labels/kubervisor~1traffic", "value": "yes"},
                {"op": "remove", "path": "/metadata/annotations/breaker~1breakAt"},
            ])
        );
    }
}
