//! The commands: read from the cluster, render with the pure views, write only the Service selector.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kubervisor_api::KubervisorService;
use kubervisor_api::pod::{NAME_LABEL, TRAFFIC_LABEL};

use crate::actions::{self, Action};
use crate::cli::{Cli, Command, ListArgs, OutputFormat, PodArgs};
use crate::connect::Cluster;
use crate::describe::Description;
use crate::error::PluginError;
use crate::format;
use crate::gate::{self, PodLosingTraffic};
use crate::list::{self, Columns};

/// What a command prints; written by `main` so that a closed pipe never panics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// Runs one invocation of the plugin.
pub async fn run(cli: Cli) -> Result<Output, PluginError> {
    let cluster = Cluster::connect(&cli.connection).await?;
    let now = Timestamp::now();
    match cli.command {
        None => list(&cluster, &cli.list, now).await,
        Some(Command::List(args)) => list(&cluster, &cli.list.merged_with(&args), now).await,
        Some(Command::Describe { name }) => describe(&cluster, &name, now).await,
        Some(Command::Activate { name, force }) => activate(&cluster, &name, force).await,
        Some(Command::Deactivate { name }) => deactivate(&cluster, &name).await,
        Some(Command::Eject(args)) => act(&cluster, Action::Eject, &args, now).await,
        Some(Command::Restore(args)) => act(&cluster, Action::Restore, &args, now).await,
        Some(Command::Pause(args)) => act(&cluster, Action::Pause, &args, now).await,
        Some(Command::Unpause(args)) => act(&cluster, Action::Unpause, &args, now).await,
    }
}

/// A manual action on one managed pod: checked against the floor, written with the
/// preconditions of what was read, and recorded as an Event.
async fn act(
    cluster: &Cluster,
    action: Action,
    args: &PodArgs,
    now: Timestamp,
) -> Result<Output, PluginError> {
    let name = args.pod.as_str();
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let pod = api
        .get_opt(name)
        .await
        .map_err(|e| cluster.error(e, &format!("cannot get pod {name:?}")))?
        .ok_or_else(|| {
            PluginError::Refused(format!(
                "pod {name:?} not found in namespace {:?}",
                cluster.namespace
            ))
        })?;
    let Some(kvs_name) = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(NAME_LABEL))
        .cloned()
    else {
        return Err(PluginError::Refused(format!(
            "pod {name:?} is not managed by a KubervisorService (it has no {NAME_LABEL} label)"
        )));
    };
    let kvs = get_kvs(cluster, &kvs_name).await?;
    let spec = kvs.spec.resolve().map_err(|e| {
        PluginError::Refused(format!(
            "kubervisorservice {kvs_name:?} has an invalid spec, so its floor is unknown: {e}"
        ))
    })?;
    let service = get_service(cluster, &kvs.spec.service).await?;
    let pods = managed_pods(cluster, service.as_ref(), &kvs_name).await?;
    let fleet = actions::fleet(&spec, &pods);
    let ops = actions::plan(action, &pod, &spec, fleet, args.force, now)?;
    match api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Json::<()>(json_patch::Patch(ops)),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 422 || status.code == 409 => {
            return Err(PluginError::Refused(format!(
                "pod {name:?} changed while it was being {}; nothing was changed, run the command again",
                action.done()
            )));
        }
        Err(e) => return Err(cluster.error(e, &format!("cannot patch pod {name:?}"))),
    }
    let forced = if args.force { " (forced)" } else { "" };
    let summary = format!(
        "pod {name:?} {} by hand{forced}: {} of the pods of kubervisorservice {kvs_name:?} served before, floor {}",
        action.done(),
        fleet.serving,
        fleet.floor
    );
    let mut out = Output {
        stdout: format!("{summary}\n"),
        stderr: String::new(),
    };
    if let Err(e) = record(cluster, action, &pod, &kvs, &summary, now).await {
        out.stderr =
            format!("warning: the action was done but could not be recorded as an event: {e}\n");
    }
    Ok(out)
}

/// An `events.k8s.io` Event on the pod, related to its KubervisorService.
async fn record(
    cluster: &Cluster,
    action: Action,
    pod: &Pod,
    kvs: &KubervisorService,
    note: &str,
    now: Timestamp,
) -> Result<(), PluginError> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{pod_name}.{:x}", now.as_nanosecond())),
            namespace: Some(cluster.namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some(action.command().to_string()),
        reason: Some(action.reason().to_string()),
        note: Some(note.to_string()),
        type_: Some("Normal".into()),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod_name),
            namespace: Some(cluster.namespace.clone()),
            uid: pod.metadata.uid.clone(),
            ..ObjectReference::default()
        }),
        related: Some(ObjectReference {
            api_version: Some("kubervisor.k8s.io/v1alpha1".into()),
            kind: Some("KubervisorService".into()),
            name: kvs.metadata.name.clone(),
            namespace: Some(cluster.namespace.clone()),
            uid: kvs.metadata.uid.clone(),
            ..ObjectReference::default()
        }),
        reporting_controller: Some("kubervisor.k8s.io/kubectl-kubervisor".into()),
        reporting_instance: Some("kubectl-kubervisor".into()),
        ..Event::default()
    };
    Api::<Event>::namespaced(cluster.client.clone(), &cluster.namespace)
        .create(&PostParams::default(), &event)
        .await
        .map(|_| ())
        .map_err(|e| cluster.error(e, "cannot create the event"))
}

async fn list(cluster: &Cluster, args: &ListArgs, now: Timestamp) -> Result<Output, PluginError> {
    let api: Api<KubervisorService> = if args.all_namespaces {
        Api::all(cluster.client.clone())
    } else {
        Api::namespaced(cluster.client.clone(), &cluster.namespace)
    };
    let items = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            let err = cluster.error(e, "cannot list kubervisorservices");
            if err.code() != Some(404) {
                return Err(err);
            }
            if !cluster.crd_installed().await? {
                return Err(PluginError::CrdNotInstalled);
            }
            // The resource is served, so the 404 is about the namespace: nothing in it.
            Vec::new()
        }
    };

    let mut out = Output::default();
    match args.output {
        Some(OutputFormat::Json) => {
            out.stdout =
                serde_json::to_string_pretty(&list::list_document(&items)).map_err(|e| {
                    PluginError::Request {
                        action: "cannot format JSON".into(),
                        cause: e.to_string(),
                    }
                })?;
            out.stdout.push('\n');
        }
        Some(OutputFormat::Yaml) => {
            out.stdout = serde_saphyr::to_string(&list::list_document(&items)).map_err(|e| {
                PluginError::Request {
                    action: "cannot format YAML".into(),
                    cause: e.to_string(),
                }
            })?;
        }
        format @ (None | Some(OutputFormat::Wide)) => {
            if items.is_empty() {
                out.stderr = if args.all_namespaces {
                    "No resources found\n".into()
                } else {
                    format!("No resources found in {} namespace.\n", cluster.namespace)
                };
            } else {
                let columns = Columns {
                    namespace: args.all_namespaces,
                    wide: format == Some(OutputFormat::Wide),
                };
                out.stdout = list::render_table(&items, columns, now);
            }
        }
    }
    Ok(out)
}

async fn describe(cluster: &Cluster, name: &str, now: Timestamp) -> Result<Output, PluginError> {
    let kvs = get_kvs(cluster, name).await?;
    let service = get_service(cluster, &kvs.spec.service).await?;
    let pods = managed_pods(cluster, service.as_ref(), name).await?;
    let text = Description {
        kvs: &kvs,
        service: service.as_ref(),
        pods: &pods,
        now,
    }
    .render();
    Ok(Output {
        stdout: text,
        stderr: String::new(),
    })
}

async fn activate(cluster: &Cluster, name: &str, force: bool) -> Result<Output, PluginError> {
    let kvs = get_kvs(cluster, name).await?;
    let service = require_service(cluster, &kvs).await?;
    let service_name = &kvs.spec.service;
    let selector = gate::service_selector(&service);
    let mut out = Output::default();
    if gate::is_active(&service) {
        out.stdout = format!(
            "kubervisorservice {name:?} is already active: service {service_name:?} selects {}\n",
            format::selector(&selector)
        );
        return Ok(out);
    }
    let refuse = |why: String| {
        PluginError::Refused(format!(
            "refusing to activate kubervisorservice {name:?}: {why}"
        ))
    };
    // Not overridable: with nothing else in the selector, traffic=yes would pull in every Kubervisor pod of the namespace.
    let Some(managed) = gate::managed_selector(&service) else {
        return Err(refuse(format!(
            "service {service_name:?} selects no pods besides {TRAFFIC_LABEL}, so Kubervisor cannot tell which pods it guards"
        )));
    };

    let not_ready = match list::ready_condition(&kvs) {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(format!(
            "it is not Ready (Ready={}, reason {}: {})",
            c.status,
            c.reason.as_deref().unwrap_or(format::NONE),
            c.message.as_deref().unwrap_or("no message")
        )),
        None => Some(
            "it has no Ready condition yet (has the Kubervisor operator seen it? is it running?)"
                .to_string(),
        ),
    };
    if let Some(why) = not_ready {
        if !force {
            return Err(refuse(format!("{why}; pass --force to activate anyway")));
        }
        out.stderr
            .push_str(&format!("warning: kubervisorservice {name:?}: {why}\n"));
    }

    let pods = list_pods(cluster, &gate::label_selector(&managed)).await?;
    let losing = gate::pods_losing_traffic(&pods);
    if !losing.is_empty() {
        let live = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count();
        let names: Vec<String> = losing.iter().map(PodLosingTraffic::describe).collect();
        let why = format!(
            "{} of {live} managed pods lack {TRAFFIC_LABEL}=yes and would stop receiving traffic: {}",
            losing.len(),
            names.join(", ")
        );
        if !force {
            return Err(refuse(format!("{why}; pass --force to activate anyway")));
        }
        out.stderr.push_str(&format!("warning: {why}\n"));
    }

    patch_selector(
        cluster,
        service_name,
        &selector,
        gate::activation_patch(&selector),
        "activated",
    )
    .await?;
    let mut after = selector.clone();
    after.insert(TRAFFIC_LABEL.into(), "yes".into());
    out.stdout = format!(
        "kubervisorservice {name:?} activated: service {service_name:?} now selects {}\n",
        format::selector(&after)
    );
    Ok(out)
}

async fn deactivate(cluster: &Cluster, name: &str) -> Result<Output, PluginError> {
    let kvs = get_kvs(cluster, name).await?;
    let service = require_service(cluster, &kvs).await?;
    let service_name = &kvs.spec.service;
    let selector = gate::service_selector(&service);
    if !selector.contains_key(TRAFFIC_LABEL) {
        return Ok(Output {
            stdout: format!(
                "kubervisorservice {name:?} is already inactive: service {service_name:?} selects {}\n",
                format::selector(&selector)
            ),
            stderr: String::new(),
        });
    }
    patch_selector(
        cluster,
        service_name,
        &selector,
        gate::deactivation_patch(&selector),
        "deactivated",
    )
    .await?;
    let mut after = selector.clone();
    after.remove(TRAFFIC_LABEL);
    Ok(Output {
        stdout: format!(
            "kubervisorservice {name:?} deactivated: service {service_name:?} now selects {}, whatever the pods' {TRAFFIC_LABEL} label\n",
            format::selector(&after)
        ),
        stderr: String::new(),
    })
}

async fn patch_selector(
    cluster: &Cluster,
    service_name: &str,
    read: &BTreeMap<String, String>,
    patch: json_patch::Patch,
    verb: &str,
) -> Result<(), PluginError> {
    let api: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    match api
        .patch(
            service_name,
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 422 || status.code == 409 => {
            Err(PluginError::Refused(format!(
                "service {service_name:?} changed while it was being {verb} (its selector is no longer {}); nothing was changed, run the command again",
                format::selector(read)
            )))
        }
        Err(e) => Err(cluster.error(
            e,
            &format!("cannot patch the selector of service {service_name:?}"),
        )),
    }
}

/// The KubervisorService, telling a missing CRD from a missing object.
async fn get_kvs(cluster: &Cluster, name: &str) -> Result<KubervisorService, PluginError> {
    let api: Api<KubervisorService> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let found = api
        .get_opt(name)
        .await
        .map_err(|e| cluster.error(e, &format!("cannot get kubervisorservice {name:?}")))?;
    if let Some(kvs) = found {
        return Ok(kvs);
    }
    if !cluster.crd_installed().await? {
        return Err(PluginError::CrdNotInstalled);
    }
    Err(PluginError::NotFound {
        name: name.to_string(),
        namespace: cluster.namespace.clone(),
    })
}

async fn get_service(cluster: &Cluster, name: &str) -> Result<Option<Service>, PluginError> {
    if name.is_empty() {
        return Ok(None);
    }
    let api: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    api.get_opt(name)
        .await
        .map_err(|e| cluster.error(e, &format!("cannot get service {name:?}")))
}

async fn require_service(
    cluster: &Cluster,
    kvs: &KubervisorService,
) -> Result<Service, PluginError> {
    get_service(cluster, &kvs.spec.service)
        .await?
        .ok_or_else(|| PluginError::ServiceNotFound {
            service: kvs.spec.service.clone(),
            kvs: kvs.metadata.name.clone().unwrap_or_default(),
            namespace: cluster.namespace.clone(),
        })
}

async fn list_pods(cluster: &Cluster, selector: &str) -> Result<Vec<Pod>, PluginError> {
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    api.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .map_err(|e| cluster.error(e, &format!("cannot list pods with labels {selector}")))
}

/// The pods of the Service's selector (without the traffic key) and those labelled as ours.
async fn managed_pods(
    cluster: &Cluster,
    service: Option<&Service>,
    name: &str,
) -> Result<Vec<Pod>, PluginError> {
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    let mut selectors = vec![format!("{NAME_LABEL}={name}")];
    if let Some(managed) = service.and_then(gate::managed_selector) {
        selectors.push(gate::label_selector(&managed));
    }
    for selector in selectors {
        for pod in list_pods(cluster, &selector).await? {
            pods.insert(pod.metadata.name.clone().unwrap_or_default(), pod);
        }
    }
    Ok(pods.into_values().collect())
}
