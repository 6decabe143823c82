//! Who is woken when the index changes.
//!
//! Each per-resource task registers what its observation reads: its KubervisorService,
//! the Service that resource names, and that Service's selector. A change wakes only the
//! tasks that read what changed. Waking every task of a namespace on every change made
//! each pod event cost one observation per KubervisorService of the namespace: with
//! 10,000 resources in one namespace, adopting 100,000 pods meant a billion
//! observations' worth of wake-ups, and any pod churn at rest the same.
//!
//! What cannot be narrowed wakes the whole namespace: a KubervisorService created or
//! deleted (a pod claimed by a deleted resource may be claimed by another) and relists.

use std::collections::HashMap;

use kubervisor_api::pod::NAME_LABEL;
use tokio::sync::watch;

use crate::labels::Labels;

/// One task's registration.
struct Interest {
    kvs: String,
    service: Option<String>,
    /// Its strings shared with the pods' labels.
    selector: Option<Labels>,
    tx: watch::Sender<u64>,
}

impl Interest {
    /// The selector's first pair, under which the interest is filed: a pod the selector
    /// matches has that pair among its labels.
    fn filed_under(&self) -> Option<(&str, &str)> {
        self.selector.as_ref()?.iter().next()
    }

    fn selects(&self, labels: &Labels) -> bool {
        self.selector.as_ref().is_some_and(|s| s.selects(labels))
    }

    fn wake(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Ids of interests by the value they are filed under; a few per value at most.
type Filed = HashMap<String, Vec<u64>>;

#[derive(Default)]
struct Namespace {
    interests: HashMap<u64, Interest>,
    by_kvs: Filed,
    by_service: Filed,
    /// selector's first label key → its value → interests.
    by_pair: HashMap<String, Filed>,
}

fn file(filed: &mut Filed, key: String, id: u64) {
    filed.entry(key).or_default().push(id);
}

fn unfile(filed: &mut Filed, key: &str, id: u64) {
    if let Some(ids) = filed.get_mut(key) {
        ids.retain(|i| *i != id);
        if ids.is_empty() {
            filed.remove(key);
        }
    }
}

impl Namespace {
    fn add(&mut self, id: u64, interest: Interest) {
        file(&mut self.by_kvs, interest.kvs.clone(), id);
        self.file_reads(id, &interest);
        self.interests.insert(id, interest);
    }

    fn file_reads(&mut self, id: u64, interest: &Interest) {
        if let Some(service) = &interest.service {
            file(&mut self.by_service, service.clone(), id);
        }
        if let Some((k, v)) = interest.filed_under() {
            file(
                self.by_pair.entry(k.to_string()).or_default(),
                v.to_string(),
                id,
            );
        }
    }

    fn unfile_reads(&mut self, id: u64) {
        let Some(interest) = self.interests.get(&id) else {
            return;
        };
        let service = interest.service.clone();
        let pair = interest
            .filed_under()
            .map(|(k, v)| (k.to_string(), v.to_string()));
        if let Some(service) = service {
            unfile(&mut self.by_service, &service, id);
        }
        if let Some((k, v)) = pair
            && let Some(values) = self.by_pair.get_mut(&k)
        {
            unfile(values, &v, id);
            if values.is_empty() {
                self.by_pair.remove(&k);
            }
        }
    }

    fn remove(&mut self, id: u64) {
        self.unfile_reads(id);
        if let Some(interest) = self.interests.remove(&id) {
            unfile(&mut self.by_kvs, &interest.kvs, id);
        }
    }

    fn wake_ids(&self, ids: &[u64]) {
        ids.iter()
            .filter_map(|id| self.interests.get(id))
            .for_each(Interest::wake);
    }

    fn wake_all(&self) {
        self.interests.values().for_each(Interest::wake);
    }

    /// Adds the interests a pod with these labels concerns: those whose selector it
    /// matches, and the resource its `kubervisor/name` label names.
    fn woken_by(&self, labels: &Labels, woken: &mut Vec<u64>) {
        for (k, v) in labels.iter() {
            let Some(ids) = self.by_pair.get(k).and_then(|values| values.get(v)) else {
                continue;
            };
            woken.extend(
                ids.iter()
                    .filter(|id| self.interests.get(id).is_some_and(|i| i.selects(labels))),
            );
        }
        if let Some(ids) = labels
            .get(NAME_LABEL)
            .and_then(|owner| self.by_kvs.get(owner))
        {
            woken.extend(ids);
        }
    }
}

/// Every task's registration, by namespace.
#[derive(Default)]
pub struct Interests {
    namespaces: HashMap<String, Namespace>,
    next_id: u64,
}

impl Interests {
    /// Registers the task of `kvs`, woken so far only by changes to that resource and by
    /// namespace-wide events; [`Interests::follow`] adds its Service and pods.
    pub fn register(&mut self, namespace: &str, kvs: &str) -> (u64, watch::Receiver<u64>) {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = watch::channel(0);
        self.namespaces
            .entry(namespace.to_string())
            .or_default()
            .add(
                id,
                Interest {
                    kvs: kvs.to_string(),
                    service: None,
                    selector: None,
                    tx,
                },
            );
        (id, rx)
    }

    pub fn unregister(&mut self, namespace: &str, id: u64) {
        if let Some(ns) = self.namespaces.get_mut(namespace) {
            ns.remove(id);
            if ns.interests.is_empty() {
                self.namespaces.remove(namespace);
            }
        }
    }

    /// Sets what the task reads: the Service it names and the selector of that Service.
    pub fn follow(
        &mut self,
        namespace: &str,
        id: u64,
        service: Option<&str>,
        selector: Option<&Labels>,
    ) {
        let Some(ns) = self.namespaces.get_mut(namespace) else {
            return;
        };
        let Some(interest) = ns.interests.get(&id) else {
            return;
        };
        if interest.service.as_deref() == service && interest.selector.as_ref() == selector {
            return;
        }
        ns.unfile_reads(id);
        let Some(mut interest) = ns.interests.remove(&id) else {
            return;
        };
        interest.service = service.map(str::to_string);
        interest.selector = selector.cloned();
        ns.file_reads(id, &interest);
        ns.interests.insert(id, interest);
    }

    /// A pod changed from `old` labels (`None`: it is new) to `new` (`None`: it is gone).
    pub fn pod_changed(&self, namespace: &str, old: Option<&Labels>, new: Option<&Labels>) {
        let Some(ns) = self.namespaces.get(namespace) else {
            return;
        };
        let mut woken = Vec::new();
        for labels in [old, new].into_iter().flatten() {
            ns.woken_by(labels, &mut woken);
        }
        woken.sort_unstable();
        woken.dedup();
        ns.wake_ids(&woken);
    }

    pub fn service_changed(&self, namespace: &str, name: &str) {
        if let Some(ns) = self.namespaces.get(namespace)
            && let Some(ids) = ns.by_service.get(name)
        {
            ns.wake_ids(ids);
        }
    }

    pub fn kvs_changed(&self, namespace: &str, name: &str) {
        if let Some(ns) = self.namespaces.get(namespace)
            && let Some(ids) = ns.by_kvs.get(name)
        {
            ns.wake_ids(ids);
        }
    }

    pub fn namespace_changed(&self, namespace: &str) {
        if let Some(ns) = self.namespaces.get(namespace) {
            ns.wake_all();
        }
    }

    pub fn everything_changed(&self) {
        self.namespaces.values().for_each(Namespace::wake_all);
    }

    /// Whether no task is registered (every subscription dropped).
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    const KEYS: [&str; 3] = ["app", "tier", NAME_LABEL];
    const VALUES: [&str; 3] = ["a", "b", "c"];

    fn pairs() -> impl Strategy<Value = Vec<(usize, usize)>> {
        prop::collection::vec((0..KEYS.len(), 0..VALUES.len()), 0..4)
    }

    fn labels(pairs: &[(usize, usize)]) -> Labels {
        Labels::from_pairs(pairs.iter().map(|(k, v)| (KEYS[*k], VALUES[*v])))
    }

    fn selected(selector: &BTreeMap<String, String>, labels: &Labels) -> bool {
        selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v.as_str()))
    }

    proptest! {
        /// A pod change wakes exactly the tasks whose observation could differ: those
        /// whose selector selects the pod before or after, and the resource its
        /// `kubervisor/name` label names before or after. Fails if the old labels are
        /// ignored, if a selector is matched on its first pair only, or if the owner
        /// label is not followed.
        #[test]
        fn a_pod_change_wakes_exactly_the_tasks_reading_that_pod(
            tasks in prop::collection::vec((0..VALUES.len(), prop::option::of(pairs())), 1..8),
            old in prop::option::of(pairs()),
            new in prop::option::of(pairs()),
        ) {
            let mut interests = Interests::default();
            let mut registered = Vec::new();
            for (kvs, selector) in &tasks {
                let (id, rx) = interests.register("ns", VALUES[*kvs]);
                let selector: Option<BTreeMap<String, String>> = selector.as_ref().map(|pairs| {
                    pairs.iter().map(|(k, v)| (KEYS[*k].to_string(), VALUES[*v].to_string())).collect()
                }).filter(|s: &BTreeMap<String, String>| !s.is_empty());
                let followed = selector.as_ref().map(Labels::from_map);
                interests.follow("ns", id, Some("svc"), followed.as_ref());
                registered.push((VALUES[*kvs], selector, rx));
            }
            let (old, new) = (old.as_deref().map(labels), new.as_deref().map(labels));
            interests.pod_changed("ns", old.as_ref(), new.as_ref());
            interests.pod_changed("elsewhere", old.as_ref(), new.as_ref());
            for (kvs, selector, rx) in &registered {
                let reads = |l: &Labels| {
                    selector.as_ref().is_some_and(|s| selected(s, l)) || l.get(NAME_LABEL) == Some(kvs)
                };
                let expected = old.as_ref().is_some_and(reads) || new.as_ref().is_some_and(reads);
                prop_assert_eq!(rx.has_changed().unwrap(), expected, "task {} selecting {:?}", kvs, selector);
            }
        }
    }
}
