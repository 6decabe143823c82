//! Resource requests served, counted by verb and resource, so a benchmark can tell how
//! much a client asks of the API server.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Counts of resource requests (`/api/...`, `/apis/...` below a resource; discovery and
/// health paths are not counted), keyed by `(verb, resource)` as fault injection names
/// them: `("patch", "pods")`, `("update", "kubervisorservices/status")`, `("watch", "pods")`.
#[derive(Debug, Default)]
pub struct RequestCounts {
    counts: Mutex<BTreeMap<(String, String), u64>>,
}

impl RequestCounts {
    pub fn count(&self, verb: &str, resource: &str) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((verb.to_string(), resource.to_string()))
            .or_insert(0) += 1;
    }

    /// Every count so far.
    pub fn snapshot(&self) -> BTreeMap<(String, String), u64> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_verb_and_resource_apart() {
        let counts = RequestCounts::default();
        counts.count("patch", "pods");
        counts.count("patch", "pods");
        counts.count("get", "pods");
        let snapshot = counts.snapshot();
        assert_eq!(snapshot[&("patch".to_string(), "pods".to_string())], 2);
        assert_eq!(snapshot[&("get".to_string(), "pods".to_string())], 1);
    }
}
