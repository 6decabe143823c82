//! `kubervisor run`: the watches, one supervisor per KubervisorService, the HTTP
//! endpoint and, optionally, leader election.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::Reporter;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, ResourceExt};
use kubervisor_api::pod::NAME_LABEL;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::effects::{Effects, Written};
use crate::index::Index;
use crate::leader::{self, LeaseConfig};
use crate::source::{SourceSettings, Sources};
use crate::task::{self, Context, Timing};
use crate::telemetry::{self, Health, Metrics};
use crate::watch::Scope;

/// Everything `kubervisor run` is told.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub kubeconfig: Option<PathBuf>,
    pub master: Option<String>,
    pub addr: SocketAddr,
    pub namespace: Option<String>,
    pub install_crd: bool,
    pub leader_elect: bool,
    pub lease_namespace: Option<String>,
    pub lease_name: String,
    pub identity: String,
    pub sources: SourceSettings,
    pub timing: Timing,
}

/// Builds a client from a kubeconfig file, the environment or the pod's service account.
pub async fn client(kubeconfig: Option<&PathBuf>, master: Option<&str>) -> anyhow::Result<Client> {
    Client::try_from(config(kubeconfig, master).await?).context("cannot build a Kubernetes client")
}

/// The client configuration from a kubeconfig file, the environment or the pod's service account.
pub async fn config(kubeconfig: Option<&PathBuf>, master: Option<&str>) -> anyhow::Result<Config> {
    let mut config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("invalid kubeconfig {}", path.display()))?
        }
        None => Config::infer().await.context(
            "no cluster configuration: give --kubeconfig, set KUBECONFIG, or run in a pod",
        )?,
    };
    if let Some(master) = master {
        config.cluster_url = master
            .parse()
            .with_context(|| format!("--master {master:?} is not a URL"))?;
    }
    Ok(config)
}

/// Creates or updates the CRD, then waits until the API server serves it.
pub async fn install_crd(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = kubervisor_api::CRD_NAME;
    // Several replicas may install it at once: a create or replace that loses the race
    // (409) reads the CRD again and tries once more.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut crd = kubervisor_api::crd();
        let existing = api
            .get_opt(name)
            .await
            .context("cannot read CustomResourceDefinitions")?;
        let result = match existing {
            Some(existing) => {
                crd.metadata.resource_version = existing.resource_version();
                api.replace(name, &PostParams::default(), &crd)
                    .await
                    .map(|_| "updated")
            }
            None => api
                .create(&PostParams::default(), &crd)
                .await
                .map(|_| "created"),
        };
        match result {
            Ok(done) => {
                info!(crd = name, "CRD {done}");
                break;
            }
            Err(kube::Error::Api(status)) if status.code == 409 && attempts < 5 => {
                debug!(crd = name, "CRD changed meanwhile: {}", status.message);
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot create or update CustomResourceDefinition {name}")
                });
            }
        }
    }
    let established = await_condition(api, name, conditions::is_crd_established());
    match tokio::time::timeout(timeout, established).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            Err(e).with_context(|| format!("cannot watch CustomResourceDefinition {name}"))
        }
        Err(_) => bail!("CustomResourceDefinition {name} not Established after {timeout:?}"),
    }
}

/// How long a write to the API (a pod, a status, an event) may wait for its answer. The
/// API server ends its own requests after 60 s; this bound is for a connection that died
/// without closing. A write that times out is decided again on the next input, under the
/// same preconditions.
pub const API_WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the operator until `shutdown` completes.
pub async fn run(
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = config(options.kubeconfig.as_ref(), options.master.as_deref()).await?;
    let client = Client::try_from(config.clone()).context("cannot build a Kubernetes client")?;
    // Writes get an answer or fail within a bound: a write sent into a connection that went
    // dead would otherwise hold its task for good. Watches keep no bound of this kind (they
    // have their own idle timeout).
    let mut config = config;
    config.read_timeout = Some(API_WRITE_TIMEOUT);
    config.reset_reader_on_write = true;
    let writer = Client::try_from(config.clone()).context("cannot build a Kubernetes client")?;
    config.default_retry = false;
    let evictions = Client::try_from(config).context("cannot build a Kubernetes client")?;
    if options.install_crd {
        install_crd(&client, Duration::from_secs(60)).await?;
    }
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new());
    let listener = telemetry::bind(options.addr).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = {
        let mut stop = stop_rx.clone();
        tokio::spawn(telemetry::serve(
            listener,
            metrics.clone(),
            health.clone(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ))
    };

    let index = Index::new();
    let scope = match &options.namespace {
        Some(ns) => Scope::Namespace(ns.clone()),
        None => Scope::AllNamespaces,
    };
    let watches = tokio::spawn(crate::watch::run(client.clone(), scope, index.clone()));
    let synced_to_health = {
        let mut synced = index.subscribe_synced();
        let health = health.clone();
        tokio::spawn(async move {
            if synced.wait_for(|s| *s).await.is_ok() {
                info!("caches synced");
                health.set_caches_synced(true);
            }
        })
    };

    let sources =
        Sources::new(options.sources.clone()).context("cannot configure metric sources")?;
    let reporter = Reporter {
        controller: "kubervisor".into(),
        instance: Some(options.identity.clone()),
    };
    let (effects, publisher) = Effects::new(writer, evictions, reporter, metrics.clone());
    let ctx = Arc::new(Context {
        index: index.clone(),
        effects,
        sources,
        metrics: metrics.clone(),
        timing: options.timing.clone(),
    });

    // Without election this replica always leads; the sender lives as long as the operator.
    let (_always_leading, always) = watch::channel(true);
    let (leading, election) = if options.leader_elect {
        let namespace = match &options.lease_namespace {
            Some(ns) => ns.clone(),
            None => options
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string()),
        };
        let config = LeaseConfig::new(
            namespace,
            options.lease_name.clone(),
            options.identity.clone(),
        );
        let handle =
            leader::spawn(client.clone(), config).context("invalid leader election settings")?;
        health.set_election_enabled(true);
        (handle.subscribe(), Some(handle))
    } else {
        (always, None)
    };
    let leading_to_health = {
        let mut leading = leading.clone();
        let health = health.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                let now_leading = *leading.borrow_and_update();
                health.set_leading(now_leading);
                metrics.set_leading(now_leading);
                if leading.changed().await.is_err() {
                    break;
                }
            }
        })
    };

    let manager = tokio::spawn(manage(ctx, leading));
    let sweep = tokio::spawn(sweep_shared_strings());
    shutdown.await;
    info!("shutting down");
    manager.abort();
    sweep.abort();
    let _ = manager.await;
    if let Some(election) = election {
        election.release().await;
    }
    watches.abort();
    publisher.abort();
    synced_to_health.abort();
    leading_to_health.abort();
    let _ = stop_tx.send(true);
    match server.await {
        Ok(result) => result.context("HTTP endpoint failed")?,
        Err(e) if e.is_cancelled() => {}
        Err(e) => bail!("HTTP endpoint task failed: {e}"),
    }
    Ok(())
}

/// Keeps one supervisor per KubervisorService while leading, none otherwise.
async fn manage(ctx: Arc<Context>, mut leading: watch::Receiver<bool>) {
    let mut synced = ctx.index.subscribe_synced();
    let _ = synced.wait_for(|s| *s).await;
    let mut changes = ctx.index.subscribe_kvs();
    let mut supervisors: BTreeMap<(String, String), Supervised> = BTreeMap::new();
    let mut orphans = tokio::time::interval(Duration::from_secs(10));
    let mut counted: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        let is_leading = *leading.borrow_and_update();
        if is_leading {
            let present: BTreeSet<(String, String)> = ctx
                .index
                .all_kvs()
                .iter()
                .map(|entry| {
                    (
                        entry.object.namespace().unwrap_or_default(),
                        entry.object.name_any(),
                    )
                })
                .collect();
            let mut keys = BTreeMap::new();
            for key in &present {
                *keys.entry(key.0.clone()).or_insert(0) += 1;
                let running = supervisors
                    .get(key)
                    .is_some_and(|s| !s.handle.is_finished());
                if !running {
                    debug!(kvs = %format!("{}/{}", key.0, key.1), "starting its task");
                    let handle = tokio::spawn(task::run(ctx.clone(), key.0.clone(), key.1.clone()));
                    supervisors.insert(key.clone(), Supervised { handle });
                }
            }
            // One lookup per running task: this runs at every change of any resource
            // (each status written), so a scan of all resources per task was quadratic.
            supervisors.retain(|key, s| {
                let keep = present.contains(key);
                let (ns, name) = key;
                if !keep {
                    s.handle.abort();
                    ctx.metrics.forget(ns, name);
                }
                keep
            });
            for (ns, n) in &keys {
                ctx.metrics.set_items(ns, *n);
            }
            for ns in counted.keys().filter(|ns| !keys.contains_key(*ns)) {
                ctx.metrics.set_items(ns, 0);
            }
            counted = keys;
        } else if !supervisors.is_empty() {
            info!("not leading: stopping every loop");
            supervisors.clear();
        }
        tokio::select! {
            r = leading.changed() => if r.is_err() { return },
            _ = changes.changed() => {}
            _ = orphans.tick() => if is_leading {
                release_orphans(&ctx).await;
                ctx.metrics.forget_gone_pods(
                    |namespace, pod| ctx.index.has_pod(namespace, pod),
                    ctx.timing.pod_metrics_retention,
                    std::time::Instant::now(),
                );
            },
        }
    }
}

/// Forgets shared label strings that nothing uses any more ([`crate::labels::sweep`]).
async fn sweep_shared_strings() {
    let mut ticks = tokio::time::interval(Duration::from_secs(10));
    loop {
        ticks.tick().await;
        crate::labels::sweep();
    }
}

/// A running supervisor; dropping it stops it.
struct Supervised {
    handle: JoinHandle<()>,
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Hands back pods whose KubervisorService no longer exists (deleted while its finalizer was forced off).
async fn release_orphans(ctx: &Context) {
    for pod in ctx.index.pods_with_label(NAME_LABEL) {
        let owner = pod.labels.get(NAME_LABEL).unwrap_or_default();
        if pod.terminating || ctx.index.kvs(&pod.namespace, owner).is_some() {
            continue;
        }
        info!(pod = %format!("{}/{}", pod.namespace, pod.name), owner, "KubervisorService gone: restoring the pod's traffic label");
        match ctx.effects.release(&pod).await {
            Written::Done(_) | Written::Stale(_) => {}
            Written::Failed(why) | Written::Blocked(why) => warn!("{why}"),
        }
    }
}
