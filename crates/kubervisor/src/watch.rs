//! One shared watch per resource type, feeding the index.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use kubervisor_api::KubervisorService;
use tracing::{info, warn};

use crate::index::{Index, KvsEntry};

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
            Sink {
                apply: Box::new(move |p: Pod| a.apply_pod(&p)),
                delete: Box::new(move |p: Pod| d.delete_pod(&p)),
                reset: Box::new(move |all: Vec<Pod>| r.reset_pods(&all)),
            },
        )
    };
    let services = {
        let (a, d, r) = (index.clone(), index.clone(), index.clone());
        drive(
            "services",
            watcher::watcher(scope.api::<Service>(&client), watcher::Config::default()),
            Sink {
                apply: Box::new(move |s: Service| a.apply_service(&s)),
                delete: Box::new(move |s: Service| d.delete_service(&s)),
                reset: Box::new(move |all: Vec<Service>| r.reset_services(&all)),
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
            Sink {
                apply: Box::new(move |o: DynamicObject| a.apply_kvs(KvsEntry::decode(o))),
                delete: Box::new(move |o: DynamicObject| {
                    d.delete_kvs(&o.namespace().unwrap_or_default(), &o.name_any())
                }),
                reset: Box::new(move |all: Vec<DynamicObject>| {
                    r.reset_kvs(all.into_iter().map(KvsEntry::decode).collect())
                }),
            },
        )
    };
    futures::join!(pods, services, kvs);
}

/// Where one watch's events go.
struct Sink<K> {
    apply: Box<dyn Fn(K) + Send>,
    delete: Box<dyn Fn(K) + Send>,
    /// Replaces the whole set after a (re)list.
    reset: Box<dyn Fn(Vec<K>) + Send>,
}

async fn drive<K, S>(what: &'static str, stream: S, sink: Sink<K>)
where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream.default_backoff());
    // A relist is buffered between Init and InitDone so the index swaps it in at once.
    let mut relist: Vec<K> = Vec::new();
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
                        (sink.apply)(o)
                    }
                    Event::Delete(o) => (sink.delete)(o),
                    Event::Init => relist.clear(),
                    Event::InitApply(o) => relist.push(o),
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
