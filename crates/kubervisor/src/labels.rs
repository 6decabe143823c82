//! A pod's labels (or its contract annotations) as the index keeps them: a sorted slice
//! whose keys and values are shared between pods.
//!
//! In a fleet, most label keys and many values repeat from pod to pod (`app`,
//! `pod-template-hash`, `kubervisor/traffic=yes`). A `BTreeMap<String, String>` per pod
//! holds a node sized for eleven entries and two allocations per entry; here a pod holds
//! one allocation of (key, value) pointers, and each distinct string is stored once.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use kubervisor_api::pod::StrMap;

/// Sorted (key, value) pairs, keys unique.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Arc<str>, Arc<str>)]>);

impl Labels {
    /// Keeps `map`, sharing every string with the pods already seen.
    pub fn from_map(map: &BTreeMap<String, String>) -> Labels {
        Labels::from_pairs(map.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// Keeps the pairs; a key given twice keeps its last value.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Labels {
        let mut sorted: BTreeMap<&str, &str> = BTreeMap::new();
        sorted.extend(pairs);
        let mut strings = interned().lock().unwrap_or_else(|e| e.into_inner());
        Labels(
            sorted
                .into_iter()
                .map(|(k, v)| (strings.share(k), strings.share(v)))
                .collect(),
        )
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).ok().map(|i| &*self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The pairs in key order, each string shared.
    pub fn pairs(&self) -> impl Iterator<Item = &(Arc<str>, Arc<str>)> {
        self.0.iter()
    }

    /// The pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// Sets `key` to `value` unless it has a value already.
    pub fn insert_if_absent(&mut self, key: &str, value: &str) {
        if !self.contains_key(key) {
            self.insert(key, value);
        }
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) {
        *self = Labels::from_pairs(self.iter().chain([(key.as_ref(), value.as_ref())]));
    }

    pub fn clear(&mut self) {
        self.0 = Box::default();
    }

    /// Removes `key` if present.
    pub fn remove(&mut self, key: &str) {
        if let Ok(i) = self.position(key) {
            let mut pairs = std::mem::take(&mut self.0).into_vec();
            pairs.remove(i);
            self.0 = pairs.into_boxed_slice();
        }
    }

    /// These pairs without `key`, the strings still shared.
    pub fn without(&self, key: &str) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|(k, _)| **k != *key)
                .cloned()
                .collect(),
        )
    }

    /// Whether `labels` has every pair of these (as a label selector matches).
    pub fn selects(&self, labels: &Labels) -> bool {
        self.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl StrMap for Labels {
    fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

impl std::ops::Index<&str> for Labels {
    type Output = str;

    /// The value of `key`; panics when absent, as a map's index does.
    fn index(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("no label or annotation {key:?}"))
    }
}

impl serde::Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Labels {
        let pairs: Vec<(String, String)> = pairs.into_iter().collect();
        Labels::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Labels {
        Labels::from_map(&map)
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Labels {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(pairs: I) -> Labels {
        Labels::from_pairs(pairs)
    }
}

/// The strings of every label kept, each once.
#[derive(Default)]
struct Interned {
    strings: HashSet<Arc<str>>,
    /// The set's size after the last sweep: it is swept again when it has doubled.
    swept_at: usize,
}

impl Interned {
    fn share(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        if self.strings.len() >= 2 * self.swept_at.max(1024) {
            self.sweep();
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(shared.clone());
        shared
    }

    /// Forgets the strings no pod uses any more (the set holds the only reference).
    fn sweep(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.strings.shrink_to_fit();
        self.swept_at = self.strings.len();
    }
}

fn interned() -> &'static Mutex<Interned> {
    static INTERNED: OnceLock<Mutex<Interned>> = OnceLock::new();
    INTERNED.get_or_init(Mutex::default)
}

/// `s` as a string shared with every other holder of the same text: label values, and
/// the label values of metric series, which repeat a resource's name and namespace.
pub fn share(s: &str) -> Arc<str> {
    interned()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .share(s)
}

/// Forgets the strings no kept label uses any more; called from time to time so that a
/// fleet that changes its labels does not grow the set for ever.
pub fn sweep() {
    interned().lock().unwrap_or_else(|e| e.into_inner()).sweep();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().copied().collect()
    }

    #[test]
    fn lookups_follow_the_pairs_whatever_their_order() {
        let l = labels(&[("b", "2"), ("a", "1"), ("c", "3"), ("a", "9")]);
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            [("a", "9"), ("b", "2"), ("c", "3")]
        );
        assert_eq!(
            (l.get("a"), l.get("b"), l.get("x")),
            (Some("9"), Some("2"), None)
        );
        assert!(l.contains_key("c") && !l.contains_key(""));
        assert_eq!(l.len(), 3);
        let map = l.to_map();
        assert_eq!(Labels::from_map(&map), l);
    }

    #[test]
    fn insert_and_remove_keep_the_order() {
        let mut l = labels(&[("b", "2")]);
        l.insert("a", "1");
        l.insert_if_absent("b", "changed");
        l.insert("c", "3");
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            [("a", "1"), ("b", "2"), ("c", "3")]
        );
        l.remove("b");
        l.remove("absent");
        assert_eq!(l.iter().collect::<Vec<_>>(), [("a", "1"), ("c", "3")]);
        assert_eq!(l.without("a").iter().collect::<Vec<_>>(), [("c", "3")]);
        assert_eq!(l.without("absent"), l);
    }

    #[test]
    fn a_selector_selects_labels_holding_each_of_its_pairs() {
        let pod = labels(&[("app", "web"), ("tier", "front"), ("x", "1")]);
        assert!(labels(&[("app", "web"), ("tier", "front")]).selects(&pod));
        assert!(
            labels(&[]).selects(&pod),
            "an empty selector selects everything"
        );
        assert!(!labels(&[("app", "web"), ("tier", "back")]).selects(&pod));
        assert!(!labels(&[("app", "web"), ("zone", "a")]).selects(&pod));
    }

    #[test]
    fn equal_strings_are_stored_once_and_forgotten_when_unused() {
        let unique = format!("value-only-in-this-test-{:p}", &0u8);
        let a = labels(&[("app", &unique)]);
        let b = labels(&[("app", &unique)]);
        let (ka, va) = a.pairs().next().unwrap();
        let (kb, vb) = b.pairs().next().unwrap();
        assert!(Arc::ptr_eq(ka, kb) && Arc::ptr_eq(va, vb));
        drop((a, b));
        sweep();
        let set = interned().lock().unwrap();
        assert!(!set.strings.contains(unique.as_str()));
    }
}
