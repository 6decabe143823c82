//! One shared watch per resource type, feeding the index.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use kubervisor_api::KubervisorService;
use tracing::{info, warn};

use crate::index::{Index, KvsEntry, SlimPod, SlimService};

/// Which namespaces the operator watches.
#[derive(Clone, Debug, Default)]
pub enum Scope {
    #[default]
    AllNamespaces,
    Namespace(String),
}

impl Scope {
    pub fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match self {
            Scope::AllNamespaces => Api::all(client.clone()),
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }
}

/// Runs the three watches until the returned future is dropped.
pub async fn run(client: Client, scope: Scope, index: Arc<Index>) {
    let pods = {
        let (a, d, r) = (index.clone(), index.clone(), index.clone());
        drive(
            "pods",
            watcher::watcher(scope.api::<Pod>(&client), watcher::Config::default()),
            |p: Pod| SlimPod::from_pod(&p),
            Sink {
                apply: Box::new(move |p| a.apply_pod(p)),
                delete: Box::new(move |p| d.delete_pod(&p.namespace, &p.name)),
                reset: Box::new(move |all| r.reset_pods(all)),
            },
        )
    };
    let services = {
        let (a, d, r) = (index.clone(), index.clone(), index.clone());
        drive(
            "services",
            watcher::watcher(scope.api::<Service>(&client), watcher::Config::default()),
            |s: Service| SlimService::from_service(&s),
            Sink {
                apply: Box::new(move |s| a.apply_service(s)),
                delete: Box::new(move |s| d.delete_service(&s.namespace, &s.name)),
                reset: Box::new(move |all| r.reset_services(all)),
            },
        )
    };
    let kvs = {
        let resource = ApiResource::erase::<KubervisorService>(&());
        let api: Api<DynamicObject> = match &scope {
            Scope::AllNamespaces => Api::all_with(client.clone(), &resource),
            Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        };
        let (a, d, r) = (index.clone(), index.clone(), index.clone());
        drive(
            "kubervisorservices",
            watcher::watcher(api, watcher::Config::default()),
            KvsEntry::decode,
            Sink {
                apply: Box::new(move |e| a.apply_kvs(e)),
                delete: Box::new(move |e: KvsEntry| {
                    d.delete_kvs(
                        &e.object.namespace().unwrap_or_default(),
                        &e.object.name_any(),
                    )
                }),
                reset: Box::new(move |all| r.reset_kvs(all)),
            },
        )
    };
    futures::join!(pods, services, kvs);
}

/// The cap on the wait between two attempts of a failed watch, before jitter (which adds
/// up to as much again). kube-runtime's default doubles up to 30 s, plus as much jitter:
/// after the API had been unreachable for half a minute, the next attempt could come a
/// minute later, with the index blind and everything due waiting meanwhile. A failed
/// attempt costs the API server one refused request per watch (three per replica), so
/// retrying every few seconds is cheap.
pub const WATCH_RETRY_CAP: Duration = Duration::from_secs(3);

/// Delays between the attempts of a failed watch: from 0.8 s, doubling up to
/// [`WATCH_RETRY_CAP`], each with up to as much again of jitter; back to 0.8 s after two
/// minutes without failure.
fn retry_delays() -> ResetTimerBackoff<watcher::ExponentialBackoff> {
    let delays = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(WATCH_RETRY_CAP)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(delays.into(), Duration::from_secs(120))
}

/// Where one watch's events go, in the index's own (slim) form.
struct Sink<T> {
    apply: Box<dyn Fn(T) + Send>,
    delete: Box<dyn Fn(T) + Send>,
    /// Replaces the whole set after a (re)list.
    reset: Box<dyn Fn(Vec<T>) + Send>,
}

/// Feeds one watch into `sink`, each object made slim as soon as it is decoded.
async fn drive<K, T, S>(what: &'static str, stream: S, slim: fn(K) -> T, sink: Sink<T>)
where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream.backoff(retry_delays()));
    // A relist is buffered between Init and InitDone so the index swaps it in at once;
    // slim, or the listing of 10,000 pods would be held whole (about 8 KB a pod, most of
    // it managed fields and container specs the index never reads).
    let mut relist: Vec<T> = Vec::new();
    let mut failing = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if failing {
                    info!(watch = what, "watch recovered");
                    failing = false;
                }
                match event {
                    Event::Apply(o) => {
                        tracing::trace!(watch = what, "applied");
                        (sink.apply)(slim(o))
                    }
                    Event::Delete(o) => (sink.delete)(slim(o)),
                    Event::Init => relist = Vec::new(),
                    Event::InitApply(o) => relist.push(slim(o)),
                    Event::InitDone => (sink.reset)(std::mem::take(&mut relist)),
                }
            }
            Err(e) => {
                if !failing {
                    warn!(watch = what, error = %e, "watch failed; retrying with backoff{}", hint(what, &e));
                }
                failing = true;
            }
        }
    }
}

fn hint(what: &str, error: &watcher::Error) -> &'static str {
    let text = error.to_string();
    if what == "kubervisorservices" && (text.contains("404") || text.contains("NotFound")) {
        " (is the CRD installed? `kubervisor crd | kubectl apply -f -`, or run with --install-crd)"
    } else if text.contains("403") || text.contains("Forbidden") {
        " (check the operator's RBAC permissions)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_watch_is_tried_again_within_twice_the_cap() {
        let delays: Vec<Duration> = retry_delays().take(200).collect();
        assert_eq!(delays.len(), 200, "the retries never stop");
        let longest = delays.iter().max().unwrap();
        assert!(*longest <= 2 * WATCH_RETRY_CAP, "{longest:?}");
        assert!(
            *longest >= WATCH_RETRY_CAP,
            "{longest:?}: the cap is reached"
        );
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(800)));
    }
}
