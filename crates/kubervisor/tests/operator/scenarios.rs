use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::harness::{Backend, Cluster, CustomDetector, eventually};
use kubesim::on_both_backends;

pub(crate) fn count(traffic: &BTreeMap<String, String>, value: &str) -> usize {
    traffic.values().filter(|t| *t == value).count()
}

fn custom_breaker(detector: &CustomDetector, min_count: u32, min_ratio: u32) -> serde_json::Value {
    json!([{
        "name": "faulty",
        "evaluationPeriod": 0.3,
        "minPodsAvailableCount": min_count,
        "minPodsAvailableRatio": min_ratio,
        "customService": detector.url,
    }])
}

const NEVER: serde_json::Value = serde_json::Value::Null;

pub(crate) fn periodic(period: f64) -> serde_json::Value {
    json!({"mode": "periodic", "period": period})
}

/// Waits until exactly `n` pods have `traffic=value`, and returns every pod's traffic label.
pub(crate) async fn wait_traffic(
    cluster: &Cluster,
    value: &str,
    n: usize,
) -> BTreeMap<String, String> {
    eventually(
        &format!("{n} pods with traffic={value}"),
        // Generous: on the real control plane a Prometheus verdict waits for the workload's
        // discovery file, a scrape and a rate window, while the other scenarios run too.
        Duration::from_secs(30),
        || async {
            let traffic = cluster.traffic("web").await;
            if count(&traffic, value) == n {
                Ok(traffic)
            } else {
                Err(format!("{traffic:?}"))
            }
        },
    )
    .await
}

/// Waits until exactly `n` events of `reason` regard the KubervisorService `web`
/// (events are published once the pod writes of a decision are done).
async fn wait_events(cluster: &Cluster, reason: &str, n: usize) -> Vec<(String, String)> {
    eventually(
        &format!("{n} {reason} events"),
        Duration::from_secs(10),
        || async {
            let events: Vec<(String, String)> = cluster
                .events(reason)
                .await
                .into_iter()
                .filter(|(on, _)| on == "web")
                .collect();
            if events.len() == n {
                Ok(events)
            } else {
                Err(format!("{events:?}"))
            }
        },
    )
    .await
}

/// Waits until an event of `reason` has a note that `matches` (events are published from a
/// queue, shortly after the write they report), and returns every such event.
pub(crate) async fn wait_event_note(
    cluster: &Cluster,
    reason: &str,
    matches: impl Fn(&str) -> bool,
) -> Vec<(String, String)> {
    eventually(
        &format!("a matching {reason} event"),
        Duration::from_secs(10),
        || async {
            let events = cluster.events(reason).await;
            if events.iter().any(|(_, note)| matches(note)) {
                Ok(events)
            } else {
                Err(format!("{events:?}"))
            }
        },
    )
    .await
}

/// Waits until some PodEjected event regards `pod`, and returns them as (reporting
/// instance, note).
async fn ejection_events_of(cluster: &Cluster, pod: &str) -> Vec<(String, String)> {
    eventually(
        &format!("an ejection event on {pod}"),
        Duration::from_secs(10),
        || async {
            let events = cluster.events_by("PodEjected", pod).await;
            if events.is_empty() {
                Err("none".to_string())
            } else {
                Ok(events)
            }
        },
    )
    .await
}

/// Waits until the Service `web` has exactly `n` endpoint addresses.
pub(crate) async fn wait_endpoints(cluster: &Cluster, n: usize) {
    eventually(
        &format!("{n} endpoint addresses"),
        Duration::from_secs(10),
        || async {
            let addresses = cluster.endpoint_addresses("web").await;
            if addresses == n {
                Ok(())
            } else {
                Err(format!("{addresses} addresses"))
            }
        },
    )
    .await;
}

pub(crate) async fn wait_ready_reason(cluster: &Cluster, reason: &str) -> serde_json::Value {
    eventually(
        &format!("Ready condition with reason {reason}"),
        Duration::from_secs(10),
        || async {
            let status = cluster.status("web").await;
            let ready = status["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
                .unwrap_or_default();
            if ready["reason"] == reason {
                Ok(ready)
            } else {
                Err(status.to_string())
            }
        },
    )
    .await
}

pub(crate) async fn setup(backend: Backend, replicas: i32) -> (Cluster, CustomDetector) {
    let mut cluster = Cluster::start(backend).await;
    cluster.start_operator().await;
    let detector = CustomDetector::start().await;
    cluster.deploy("web", replicas, BTreeMap::new()).await;
    (cluster, detector)
}

on_both_backends! {
    /// The original operator's own scenario: 5 pods, 2 reported faulty, at least 3 must keep traffic.
    async fn custom_detector_ejects_two_of_five_and_deletion_restores_them(backend: Backend) {
        let (mut cluster, detector) = setup(backend, 5).await;
        // Pods have no traffic label yet: the Service has no endpoints until Kubervisor adopts them.
        cluster
            .guard(custom_breaker(&detector, 3, 0), periodic(3600.0), false)
            .await;
        let pods = cluster.wait_ready_pods("web", 5).await;
        let faulty = vec![pods[1].clone(), pods[3].clone()];
        detector.report(&faulty);

        let traffic = wait_traffic(&cluster, "no", 2).await;
        assert_eq!(count(&traffic, "yes"), 3);
        for pod in &faulty {
            assert_eq!(traffic[pod], "no", "{pod} should be the one ejected");
            assert_eq!(
                cluster.label(pod, "kubervisor/strategy").await.as_deref(),
                Some("faulty")
            );
            assert_eq!(
                cluster
                    .annotation(pod, "breaker/retryCount")
                    .await
                    .as_deref(),
                Some("1")
            );
        }
        wait_endpoints(&cluster, 3).await;
        eventually(
            "status 5 managed / 2 broken / 0 paused",
            Duration::from_secs(5),
            || async {
                let status = cluster.status("web").await;
                let c = &status["podCount"];
                if c["nbPodsManaged"] == 5 && c["nbPodsBreaked"] == 2 && c["nbPodsPaused"] == 0 {
                    Ok(())
                } else {
                    Err(status.to_string())
                }
            },
        )
        .await;
        // `kubectl get kvs` prints the CRD's printer columns.
        let table = cluster.kubectl(&["get", "kvs"]);
        let lines: Vec<Vec<&str>> = table
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[0],
            [
                "NAME", "SERVICE", "STATE", "MANAGED", "BROKEN", "PAUSED", "AGE"
            ],
            "{table}"
        );
        assert_eq!(
            lines[1][..6],
            ["web", "web", "Running", "5", "2", "0"],
            "{table}"
        );
        let ejected = wait_events(&cluster, "PodEjected", 2).await;
        let on_kvs: Vec<&String> = ejected.iter().map(|(_, note)| note).collect();
        assert!(
            on_kvs[0].contains("reported by the custom detector")
                && on_kvs[0].contains("pods keep traffic (minimum 3)"),
            "{on_kvs:?}"
        );
        // The decisions show where people look: `kubectl get events` and `kubectl describe pod`.
        let listed = cluster.kubectl(&["get", "events"]);
        assert!(
            listed.lines().filter(|l| l.contains("PodEjected")).count() >= 4,
            "on the KubervisorService and on each pod: {listed}"
        );
        let described = cluster.kubectl(&["describe", "pod", &faulty[0]]);
        assert!(
            described.contains("PodEjected")
                && described.contains(&format!("pod {} ejected by breaker faulty", faulty[0])),
            "{described}"
        );

        // Every pod reported faulty: the minimum holds, and the refusal is reported.
        detector.report(&pods);
        eventually(
            "a MinimumAvailable event",
            Duration::from_secs(10),
            || async {
                let events = cluster.events("MinimumAvailable").await;
                if events.is_empty() {
                    Err("none yet".to_string())
                } else {
                    Ok(())
                }
            },
        )
        .await;
        assert_eq!(count(&cluster.traffic("web").await, "yes"), 3);

        let finalizers = cluster.kvs_api().get("web").await.unwrap().metadata.finalizers;
        assert_eq!(
            finalizers,
            Some(vec!["kubervisor.k8s.io/cleanup".to_string()]),
            "the finalizer guards the hand-back"
        );
        cluster.delete_kvs("web").await;
        eventually("every pod handed back", Duration::from_secs(10), || async {
            let pods = cluster.pods("web").await;
            let clean = pods.values().all(|p| {
                let labels = p.metadata.labels.clone().unwrap_or_default();
                let annotations = p.metadata.annotations.clone().unwrap_or_default();
                labels.get("kubervisor/traffic").map(String::as_str) == Some("yes")
                    && !labels.contains_key("kubervisor/name")
                    && !labels.contains_key("kubervisor/strategy")
                    && !annotations.contains_key("breaker/breakAt")
                    && !annotations.contains_key("breaker/retryCount")
            });
            let gone = cluster.kvs_api().get_opt("web").await.unwrap().is_none();
            if clean && gone && pods.len() == 5 {
                Ok(())
            } else {
                Err(format!("gone={gone} {:?}", cluster.traffic("web").await))
            }
        })
        .await;
        cluster.stop_operator().await;
    }
}

on_both_backends! {
    async fn four_of_five_faulty_with_ratio_fifty_ejects_only_two(backend: Backend) {
        let (cluster, detector) = setup(backend, 5).await;
        cluster
            .guard(custom_breaker(&detector, 1, 50), periodic(3600.0), false)
            .await;
        let pods = cluster.wait_ready_pods("web", 5).await;
        detector.report(&pods[..4]);
        wait_traffic(&cluster, "no", 2).await;
        // Further evaluations keep the floor of ceil(5 × 50%) = 3: the refusal is reported, nothing more goes.
        eventually(
            "a MinimumAvailable event",
            Duration::from_secs(10),
            || async {
                let events = cluster.events("MinimumAvailable").await;
                match events.first() {
                    Some((_, note)) if note.contains("3 of 5 pods must keep traffic") => Ok(()),
                    _ => Err(format!("{events:?}")),
                }
            },
        )
        .await;
        let traffic = cluster.traffic("web").await;
        assert_eq!(count(&traffic, "yes"), 3, "{traffic:?}");
        assert_eq!(traffic[&pods[4]], "yes", "the healthy pod keeps traffic");
    }
}

on_both_backends! {
    async fn periodic_activator_puts_the_pod_back_after_its_period(backend: Backend) {
        let (cluster, detector) = setup(backend, 3).await;
        cluster
            .guard(custom_breaker(&detector, 1, 0), periodic(2.0), false)
            .await;
        let pods = cluster.wait_ready_pods("web", 3).await;
        detector.report(&pods[..1]);
        wait_traffic(&cluster, "no", 1).await;
        let break_at: jiff::Timestamp = cluster
            .annotation(&pods[0], "breaker/breakAt")
            .await
            .unwrap()
            .parse()
            .unwrap();
        detector.report(&[]);
        wait_traffic(&cluster, "yes", 3).await;
        let back_after = jiff::Timestamp::now().duration_since(break_at);
        assert!(
            back_after >= jiff::SignedDuration::from_secs(2),
            "re-activated after {back_after:?}, before the period"
        );
        wait_event_note(&cluster, "PodActivated", |note| note.contains(&pods[0])).await;
    }
}

on_both_backends! {
    async fn retry_and_kill_deletes_a_pod_that_keeps_failing_and_its_replacement_is_adopted(backend: Backend) {
        let (cluster, detector) = setup(backend, 3).await;
        let activator = json!({"mode": "retryAndKill", "period": 0.5, "maxRetryCount": 1});
        cluster
            .guard(custom_breaker(&detector, 1, 0), activator, false)
            .await;
        let pods = cluster.wait_ready_pods("web", 3).await;
        let doomed = pods[0].clone();
        detector.report(std::slice::from_ref(&doomed));
        // Ejected (retry 1), back after one period, ejected again (retry 2 > 1): killed.
        eventually(
            "the failing pod deleted and replaced",
            Duration::from_secs(20),
            || async {
                let traffic = cluster.traffic("web").await;
                if !traffic.contains_key(&doomed) && traffic.len() == 3 && count(&traffic, "yes") == 3 {
                    Ok(())
                } else {
                    Err(format!("{traffic:?}"))
                }
            },
        )
        .await;
        wait_event_note(&cluster, "PodKilled", |note| {
            note.contains(&doomed) && note.contains("maxRetryCount 1")
        })
        .await;
        // The replacement was adopted.
        let pods = cluster.pods("web").await;
        for pod in pods.values() {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            assert_eq!(
                labels.get("kubervisor/name").map(String::as_str),
                Some("web")
            );
        }
    }
}

on_both_backends! {
    async fn retry_and_pause_parks_one_pod_then_kills_once_the_pause_budget_is_used(backend: Backend) {
        let (cluster, detector) = setup(backend, 4).await;
        let activator =
            json!({"mode": "retryAndPause", "period": 0.5, "maxRetryCount": 0, "maxPauseCount": 1});
        cluster
            .guard(custom_breaker(&detector, 1, 0), activator, false)
            .await;
        let pods = cluster.wait_ready_pods("web", 4).await;
        let (first, second) = (pods[0].clone(), pods[1].clone());
        detector.report(&[first.clone(), second.clone()]);
        eventually(
            "one paused, one killed",
            Duration::from_secs(15),
            || async {
                let traffic = cluster.traffic("web").await;
                if traffic.get(&first).map(String::as_str) == Some("pause")
                    && !traffic.contains_key(&second)
                    && traffic.len() == 4
                {
                    Ok(())
                } else {
                    Err(format!("{traffic:?}"))
                }
            },
        )
        .await;
        eventually("status shows 1 paused", Duration::from_secs(5), || async {
            let status = cluster.status("web").await;
            if status["podCount"]["nbPodsPaused"] == 1 {
                Ok(())
            } else {
                Err(status.to_string())
            }
        })
        .await;
        // The replacement is adopted: the paused pod stays out of the endpoints, the 3 others serve.
        wait_endpoints(&cluster, 3).await;
    }
}

on_both_backends! {
    async fn dry_run_reports_decisions_and_touches_no_pod(backend: Backend) {
        let (cluster, detector) = setup(backend, 4).await;
        cluster
            .guard(custom_breaker(&detector, 1, 0), NEVER, true)
            .await;
        let pods = eventually("4 Ready pods", Duration::from_secs(10), || async {
            let pods = cluster.pods("web").await;
            if pods.len() == 4 {
                Ok(pods.into_keys().collect::<Vec<_>>())
            } else {
                Err(format!("{}", pods.len()))
            }
        })
        .await;
        wait_ready_reason(&cluster, "DryRun").await;
        detector.report(&pods[..2]);
        eventually(
            "two DryRunEject events",
            Duration::from_secs(10),
            || async {
                let events = cluster.events("DryRunEject").await;
                let on_kvs = events
                    .iter()
                    .filter(|(on, note)| on == "web" && note.starts_with("dry run: "))
                    .count();
                if on_kvs == 2 {
                    Ok(())
                } else {
                    Err(format!("{events:?}"))
                }
            },
        )
        .await;
        for pod in cluster.pods("web").await.values() {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            assert!(
                labels.keys().all(|k| !k.starts_with("kubervisor/")),
                "dry run labelled a pod: {labels:?}"
            );
            assert!(
                pod.metadata
                    .annotations
                    .clone()
                    .unwrap_or_default()
                    .keys()
                    .all(|k| !k.starts_with("breaker/"))
            );
        }
    }
}

on_both_backends! {
    async fn invalid_spec_and_missing_service_reach_the_status(backend: Backend) {
        let mut cluster = Cluster::start(backend).await;
        cluster.start_operator().await;
        cluster
            .create_kvs(json!({
                "apiVersion": "kubervisor.k8s.io/v1alpha1",
                "kind": "KubervisorService",
                "metadata": {"name": "web", "namespace": "default"},
                // Valid for the CRD's schema (the API server stores it), invalid for the
                // operator, which says why in the status.
                "spec": {"service": "web", "breakers": [{"name": "faulty", "customService": "ftp://detector:80/faulty"}]}
            }))
            .await;
        let ready = wait_ready_reason(&cluster, "InvalidSpec").await;
        assert_eq!(ready["status"], "False");
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains("spec.breakers[0].customService: unsupported scheme `ftp`"),
            "{ready}"
        );

        let detector = CustomDetector::start().await;
        let patch = json!({"spec": {"breakers": custom_breaker(&detector, 1, 0)}});
        cluster
            .kvs_api()
            .patch(
                "web",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
        let ready = wait_ready_reason(&cluster, "ServiceNotFound").await;
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains(&format!("Service {}/web not found", cluster.namespace)),
            "{ready}"
        );

        cluster.deploy("web", 2, BTreeMap::new()).await;
        wait_ready_reason(&cluster, "Running").await;
        cluster.wait_ready_pods("web", 2).await;
    }
}

on_both_backends! {
    async fn restart_mid_scenario_loses_nothing_and_repeats_nothing(backend: Backend) {
        let (mut cluster, detector) = setup(backend, 5).await;
        cluster
            .guard(custom_breaker(&detector, 2, 0), periodic(3.0), false)
            .await;
        let pods = cluster.wait_ready_pods("web", 5).await;
        detector.report(&pods[..2]);
        wait_traffic(&cluster, "no", 2).await;
        let break_at = cluster
            .annotation(&pods[0], "breaker/breakAt")
            .await
            .unwrap();
        detector.report(&[]);

        cluster.stop_operator().await;
        cluster.start_operator().await;

        // The restarted operator brings them back on time, from the annotations alone.
        wait_traffic(&cluster, "yes", 5).await;
        let back_after = jiff::Timestamp::now().duration_since(break_at.parse().unwrap());
        assert!(
            back_after >= jiff::SignedDuration::from_secs(3),
            "back after {back_after:?}"
        );
        for pod in &pods[..2] {
            assert_eq!(
                cluster
                    .annotation(pod, "breaker/retryCount")
                    .await
                    .as_deref(),
                Some("1"),
                "{pod} ejected once"
            );
        }
        assert_eq!(
            cluster
                .annotation(&pods[0], "breaker/breakAt")
                .await
                .unwrap(),
            break_at
        );
        // Still acting: a new faulty pod is ejected once.
        detector.report(&pods[4..]);
        wait_traffic(&cluster, "no", 1).await;
        assert_eq!(
            cluster
                .annotation(&pods[4], "breaker/retryCount")
                .await
                .as_deref(),
            Some("1")
        );
        wait_events(&cluster, "PodEjected", 3).await;
    }
}

pub(crate) mod prometheus {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use kubervisor::harness::prometheus::{PrometheusOptions, PrometheusProcess};
    use kubesim::SimConfig;
    use kubesim::workload::{WorkloadConfig, start_against};
    use serde_json::json;

    use super::{count, wait_ready_reason, wait_traffic};
    use crate::harness::{Backend, Cluster, eventually};
    use kubesim::on_both_backends;

    /// A cluster whose pods a real Prometheus scrapes every second: kubesim's own
    /// workload, or on the real control plane the same workload as a client of its API.
    pub(crate) async fn cluster_with_prometheus(
        backend: Backend,
        replicas: i32,
    ) -> (Cluster, PrometheusProcess, tempfile::TempDir, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let sd_file = dir.path().join("targets.json");
        let mut cluster = match backend {
            Backend::Kubesim => {
                Cluster::start_with(SimConfig {
                    ready_delay: Duration::from_millis(100),
                    prometheus_sd: Some(sd_file.clone()),
                    default_rps: 100.0,
                    ..SimConfig::default()
                })
                .await
            }
            real => {
                let mut cluster = Cluster::start(real).await;
                let workload = start_against(
                    cluster.client.clone(),
                    WorkloadConfig {
                        namespace: Some(cluster.namespace.clone()),
                        prometheus_sd: Some(sd_file.clone()),
                        default_rps: 100.0,
                        ..WorkloadConfig::default()
                    },
                )
                .await
                .expect("the workload starts");
                cluster.workload = Some(workload);
                cluster
            }
        };
        let prometheus = PrometheusProcess::start(PrometheusOptions::new(&sd_file))
            .await
            .expect("prometheus starts (install it with `apt-get install prometheus`)");
        cluster.start_operator().await;
        cluster.deploy("web", replicas, BTreeMap::new()).await;
        let pods = eventually("pods created", Duration::from_secs(10), || async {
            let pods = cluster.pods("web").await;
            if pods.len() == replicas as usize {
                Ok(pods.into_keys().collect::<Vec<_>>())
            } else {
                Err(format!("{}", pods.len()))
            }
        })
        .await;
        (cluster, prometheus, dir, pods)
    }

    fn discrete(prometheus: &str) -> serde_json::Value {
        json!([{
            "name": "errors",
            "evaluationPeriod": 1,
            "minPodsAvailableCount": 2,
            "discreteValueOutOfList": {
                "prometheusService": prometheus,
                "promQL": "sum by (code, pod) (increase(http_requests_total{service=\"web\"}[5s]))",
                "key": "code",
                "podNamekey": "pod",
                "goodValues": ["200"],
                "tolerance": 50,
                "minActivity": 10
            }
        }])
    }

    on_both_backends! {
        async fn discrete_detector_ejects_pods_with_high_error_rate_and_the_service_recovers(backend: Backend) {
            let (cluster, prometheus, _dir, pods) = cluster_with_prometheus(backend, 5).await;
            let bad = [pods[0].clone(), pods[2].clone()];
            for pod in &bad {
                cluster
                    .annotate(pod, "sim.kubervisor.io/error-rate", "0.8")
                    .await;
            }
            cluster
                .guard(
                    discrete(prometheus.address()),
                    json!({"mode": "periodic", "period": 3600}),
                    false,
                )
                .await;
            cluster.wait_ready_pods("web", 5).await;
            let traffic = wait_traffic(&cluster, "no", 2).await;
            for pod in &bad {
                assert_eq!(traffic[pod], "no", "{traffic:?}");
            }
            let note = crate::scenarios::wait_events(&cluster, "PodEjected", 2).await;
            assert!(
                note.iter()
                    .any(|(_, n)| n.contains("bad code") && n.contains("> tolerance 50%")),
                "{note:?}"
            );
            // Measured by the simulated load: the Service serves no more errors once they are out.
            let before = cluster
                .service_stats("web")
                .expect("load on web");
            assert!(
                before.errors > 0,
                "errors were served before the ejection: {before:?}"
            );
            // The window starts again after any error: requests already routed to the
            // ejected pods (the endpoints reach the load a moment after the label) are
            // not what is measured.
            let start = std::sync::Mutex::new(before);
            eventually(
                "a window of error-free traffic",
                Duration::from_secs(20),
                || async {
                    let now = cluster.service_stats("web").unwrap();
                    let mut start = start.lock().unwrap();
                    let (requests, errors) =
                        (now.requests - start.requests, now.errors - start.errors);
                    if errors > 0 {
                        *start = now;
                        Err(format!("{errors} errors in {requests} requests"))
                    } else if requests >= 100 {
                        Ok(())
                    } else {
                        Err(format!("no error in {requests} requests so far"))
                    }
                },
            )
            .await;
        }
    }

    on_both_backends! {
        async fn continuous_detector_ejects_the_pod_whose_price_deviates(backend: Backend) {
            let (cluster, prometheus, _dir, pods) = cluster_with_prometheus(backend, 5).await;
            for (i, pod) in pods.iter().enumerate() {
                let price = if i == 3 { "40" } else { "10" };
                cluster
                    .annotate(pod, "sim.kubervisor.io/price", price)
                    .await;
            }
            let breakers = json!([{
                "name": "price",
                "evaluationPeriod": 1,
                "minPodsAvailableCount": 2,
                "continuousValueDeviation": {
                    "prometheusService": format!("http://{}", prometheus.address()),
                    "promQL": "(rate(price_sum{service=\"web\"}[5s]) / rate(price_count{service=\"web\"}[5s])) / scalar(sum(rate(price_sum{service=\"web\"}[5s])) / sum(rate(price_count{service=\"web\"}[5s])))",
                    "podNamekey": "pod",
                    "maxDeviationPercent": 75
                }
            }]);
            cluster
                .guard(breakers, json!({"mode": "periodic", "period": 3600}), false)
                .await;
            cluster.wait_ready_pods("web", 5).await;
            let traffic = wait_traffic(&cluster, "no", 1).await;
            assert_eq!(traffic[&pods[3]], "no", "{traffic:?}");
            assert_eq!(count(&traffic, "yes"), 4);
        }
    }

    on_both_backends! {
        async fn continuous_outlier_ejects_the_slow_pod_and_shows_what_it_computed(backend: Backend) {
            let (cluster, prometheus, _dir, pods) = cluster_with_prometheus(backend, 8).await;
            let slow = pods[5].clone();
            cluster
                .annotate(&slow, "sim.kubervisor.io/latency-ms", "200")
                .await;
            let breakers = json!([{
                "name": "p99",
                "evaluationPeriod": 1,
                "minPodsAvailableCount": 2,
                "continuousOutlier": {
                    "prometheusService": prometheus.address(),
                    "promQL": "histogram_quantile(0.99, sum by (pod, le) (rate(http_request_duration_seconds_bucket{service=\"web\"}[20s])))",
                    "podNamekey": "pod",
                    // The healthy pods' p99s are nearly equal, so their MAD is tiny and
                    // sampling noise alone scores past the default maxZScore; the default
                    // minDeviationPercent (10) spares them. The slow pod is 6× the median.
                    "direction": "above"
                }
            }]);
            cluster
                .guard(breakers, json!({"mode": "periodic", "period": 3600}), false)
                .await;
            cluster.wait_ready_pods("web", 8).await;
            let traffic = wait_traffic(&cluster, "no", 1).await;
            assert_eq!(traffic[&slow], "no", "{traffic:?}");
            let notes = crate::scenarios::wait_event_note(&cluster, "PodEjected", |n| {
                n.contains("modified z-score") && n.contains("median")
            })
            .await;
            assert!(notes.iter().all(|(_, n)| n.contains(&slow)), "{notes:?}");
            // status.breakers[] shows the evaluation that ejected it.
            let result = eventually("status.breakers[] with the ejection", Duration::from_secs(10), || async {
                let status = cluster.status("web").await;
                let result = status["breakers"][0].clone();
                if result["name"] == "p99" && result["ejected"] == 1 {
                    Ok(result)
                } else {
                    Err(status.to_string())
                }
            })
            .await;
            assert_eq!(result["result"], "Ok", "{result}");
            assert!(result["judged"].as_u64().unwrap() >= 5, "{result}");
            assert_eq!(result["statistic"]["kind"], "medianMad", "{result}");
            assert!(result["lastEvaluationTime"].is_string(), "{result}");
            assert_eq!(result["anomalousPods"][0]["pod"], slow.as_str(), "{result}");
            assert_eq!(result["anomalousPods"][0]["threshold"], 3.5, "{result}");
        }
    }

    on_both_backends! {
        async fn value_threshold_ejects_the_pods_whose_error_ratio_is_above_ten_percent(backend: Backend) {
            let (cluster, prometheus, _dir, pods) = cluster_with_prometheus(backend, 5).await;
            for (pod, rate) in pods.iter().zip(["0", "0.3", "0.02", "0.6", "0.05"]) {
                cluster
                    .annotate(pod, "sim.kubervisor.io/error-rate", rate)
                    .await;
            }
            let breakers = json!([{
                "name": "error-ratio",
                "evaluationPeriod": 1,
                "minPodsAvailableCount": 2,
                "valueThreshold": {
                    "prometheusService": prometheus.address(),
                    "promQL": "sum by (pod) (rate(http_requests_total{service=\"web\",code=\"500\"}[5s])) / sum by (pod) (rate(http_requests_total{service=\"web\"}[5s]))",
                    "podNamekey": "pod",
                    "above": 0.1
                }
            }]);
            cluster
                .guard(breakers, json!({"mode": "periodic", "period": 3600}), false)
                .await;
            cluster.wait_ready_pods("web", 5).await;
            let traffic = wait_traffic(&cluster, "no", 2).await;
            assert_eq!(traffic[&pods[1]], "no", "{traffic:?}");
            assert_eq!(traffic[&pods[3]], "no", "{traffic:?}");
            crate::scenarios::wait_event_note(&cluster, "PodEjected", |n| {
                n.contains("> above 0.1")
            })
            .await;
        }
    }

    on_both_backends! {
        async fn success_rate_outlier_ejects_the_pod_at_forty_percent_errors(backend: Backend) {
            let (cluster, prometheus, _dir, pods) = cluster_with_prometheus(backend, 8).await;
            let rates = ["0", "0.01", "0.02", "0", "0.01", "0.02", "0.4", "0"];
            for (pod, rate) in pods.iter().zip(rates) {
                cluster
                    .annotate(pod, "sim.kubervisor.io/error-rate", rate)
                    .await;
            }
            let breakers = json!([{
                "name": "success-rate",
                "evaluationPeriod": 1,
                "minPodsAvailableCount": 2,
                "successRateOutlier": {
                    "prometheusService": prometheus.address(),
                    "promQL": "sum by (code, pod) (increase(http_requests_total{service=\"web\"}[10s]))",
                    "podNamekey": "pod",
                    "key": "code",
                    "goodValues": ["200"],
                    "requestVolume": 50
                }
            }]);
            cluster
                .guard(breakers, json!({"mode": "periodic", "period": 3600}), false)
                .await;
            cluster.wait_ready_pods("web", 8).await;
            let traffic = wait_traffic(&cluster, "no", 1).await;
            assert_eq!(traffic[&pods[6]], "no", "{traffic:?}");
            crate::scenarios::wait_event_note(&cluster, "PodEjected", |n| {
                n.contains("success rate") && n.contains("mean")
            })
            .await;
        }
    }

    on_both_backends! {
        async fn value_trend_ejects_the_pod_whose_latency_climbs(backend: Backend) {
            let (cluster, prometheus, _dir, pods) = cluster_with_prometheus(backend, 6).await;
            let climbing = pods[2].clone();
            // 20 ms more every second.
            cluster
                .annotate(&climbing, "sim.kubervisor.io/latency-ms-per-minute", "1200")
                .await;
            let breakers = json!([{
                "name": "latency-climb",
                "evaluationPeriod": 1,
                "minPodsAvailableCount": 2,
                "valueTrend": {
                    "prometheusService": prometheus.address(),
                    "promQL": "sum by (pod) (rate(http_request_duration_seconds_sum{service=\"web\"}[5s])) / sum by (pod) (rate(http_request_duration_seconds_count{service=\"web\"}[5s]))",
                    "podNamekey": "pod",
                    "window": 30,
                    "maxSlope": 0.003
                }
            }]);
            cluster
                .guard(breakers, json!({"mode": "periodic", "period": 3600}), false)
                .await;
            cluster.wait_ready_pods("web", 6).await;
            let traffic = wait_traffic(&cluster, "no", 1).await;
            assert_eq!(traffic[&climbing], "no", "{traffic:?}");
            crate::scenarios::wait_event_note(&cluster, "PodEjected", |n| {
                n.contains("> maxSlope 0.003")
            })
            .await;
        }
    }

    on_both_backends! {
        async fn prometheus_outage_ejects_nothing_and_reaches_the_status(backend: Backend) {
            let (cluster, prometheus, _dir, pods) = cluster_with_prometheus(backend, 4).await;
            for pod in &pods {
                cluster
                    .annotate(pod, "sim.kubervisor.io/error-rate", "1")
                    .await;
            }
            let address = prometheus.address().to_string();
            prometheus.stop().await;
            cluster
                .guard(
                    discrete(&address),
                    json!({"mode": "periodic", "period": 3600}),
                    false,
                )
                .await;
            cluster.wait_ready_pods("web", 4).await;
            let ready = wait_ready_reason(&cluster, "SourceError").await;
            let message = ready["message"].as_str().unwrap();
            assert!(
                message.contains("breaker errors") && message.contains(&address),
                "{message}"
            );
            crate::scenarios::wait_event_note(&cluster, "SourceError", |n| {
                n.contains("no pod is ejected")
            })
            .await;
            // Every pod fails, yet no source answered: all keep traffic.
            assert_eq!(count(&cluster.traffic("web").await, "yes"), 4);

            // Replacing the failing breaker clears its error from the status.
            let detector = crate::harness::CustomDetector::start().await;
            let patch =
                json!({"spec": {"breakers": [{"name": "custom", "customService": detector.url}]}});
            cluster
                .kvs_api()
                .patch(
                    "web",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
                .unwrap();
            wait_ready_reason(&cluster, "Running").await;
        }
    }
}

on_both_backends! {
    /// Two replicas with leader election: only the leader acts; when it stops, the other takes over.
    async fn with_leader_election_only_the_leader_acts_and_a_standby_takes_over(backend: Backend) {
        let mut cluster = Cluster::start(backend).await;
        cluster.start_replica("replica-a", true).await;
        let detector = CustomDetector::start().await;
        cluster.deploy("web", 4, BTreeMap::new()).await;
        cluster
            .guard(custom_breaker(&detector, 1, 0), periodic(3600.0), false)
            .await;
        let pods = cluster.wait_ready_pods("web", 4).await;
        cluster.start_replica("replica-b", true).await;

        detector.report(&pods[..1]);
        wait_traffic(&cluster, "no", 1).await;
        let first = ejection_events_of(&cluster, &pods[0]).await;
        assert_eq!(first.len(), 1, "one replica acted once: {first:?}");
        assert_eq!(first[0].0, "replica-a", "the first replica holds the lease");

        // The leader stops and gives the lease up; the standby takes over and acts.
        cluster.stop_replica("replica-a").await;
        detector.report(&pods[1..2]);
        wait_traffic(&cluster, "no", 2).await;
        let second = ejection_events_of(&cluster, &pods[1]).await;
        assert_eq!(second.len(), 1, "{second:?}");
        assert_eq!(second[0].0, "replica-b");
        assert_eq!(
            cluster.events_by("PodEjected", &pods[0]).await.len(),
            1,
            "nothing done twice"
        );
    }
}
