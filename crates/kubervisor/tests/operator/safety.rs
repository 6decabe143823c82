//! Fleet safety end to end, on kubesim and on the real control plane: the floor restored
//! after outside losses, panic, the ejection rate limit, and kills that a
//! PodDisruptionBudget may refuse.

use std::time::{Duration, Instant};

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::harness::{Cluster, CustomDetector, eventually};
use crate::scenarios::{
    count, periodic, setup, wait_endpoints, wait_event_note, wait_ready_reason, wait_traffic,
};
use kubesim::on_both_backends;

/// One custom breaker over `detector`, evaluated every `period` seconds, with extra fields.
fn breaker(detector: &CustomDetector, period: f64, extra: serde_json::Value) -> serde_json::Value {
    let mut breaker = json!({
        "name": "faulty",
        "evaluationPeriod": period,
        "minPodsAvailableCount": 1,
        "customService": detector.url,
    });
    for (key, value) in extra.as_object().expect("an object") {
        breaker[key] = value.clone();
    }
    json!([breaker])
}

/// Pods of `web` whose `Ready` condition is `True`.
async fn ready_pods(cluster: &Cluster) -> Vec<String> {
    cluster
        .pods("web")
        .await
        .into_iter()
        .filter(|(_, pod)| {
            pod.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .map(|(name, _)| name)
        .collect()
}

on_both_backends! {
    /// 6 pods, floor 4, 2 ejected; 2 serving pods turn unready: both ejected pods serve
    /// again at once, long before their period.
    async fn outside_losses_bring_ejected_pods_back_to_restore_the_floor(backend: Backend) {
        let (cluster, detector) = setup(backend, 6).await;
        let breakers = json!([{
            "name": "faulty",
            "evaluationPeriod": 0.3,
            "minPodsAvailableCount": 4,
            "customService": detector.url,
        }]);
        cluster.guard(breakers, periodic(600.0), false).await;
        let pods = cluster.wait_ready_pods("web", 6).await;
        // The detector keeps naming them: the floor, not the detector, brings them back.
        detector.report(&pods[..2]);
        wait_traffic(&cluster, "no", 2).await;

        for pod in &pods[2..4] {
            cluster.make_unready(pod).await;
        }
        let lost = Instant::now();
        eventually("the two serving pods seen unready", Duration::from_secs(10), || async {
            let ready = ready_pods(&cluster).await;
            if ready.len() == 4 { Ok(()) } else { Err(format!("{ready:?}")) }
        })
        .await;
        let traffic = eventually(
            "both ejected pods back in traffic within 3 s",
            Duration::from_secs(3).saturating_sub(lost.elapsed()),
            || async {
                let traffic = cluster.traffic("web").await;
                if count(&traffic, "yes") == 6 { Ok(traffic) } else { Err(format!("{traffic:?}")) }
            },
        )
        .await;
        eprintln!("floor restored {:?} after the loss: {traffic:?}", lost.elapsed());
        // Events are published shortly after the writes they report.
        eventually("a FloorRestored event on each pod", Duration::from_secs(10), || async {
            let events = cluster.events("FloorRestored").await;
            let on = |pod: &String| events.iter().any(|(on, note)| on == pod && note.contains("floor 4"));
            if pods[..2].iter().all(on) { Ok(()) } else { Err(format!("{events:?}")) }
        })
        .await;
        for pod in &pods[..2] {
            assert_eq!(
                cluster.annotation(pod, "breaker/retryCount").await.as_deref(),
                Some("1"),
                "{pod} keeps its retry count"
            );
        }
        // Still named by the detector, they stay in: 4 Ready pods, floor 4.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(count(&cluster.traffic("web").await, "yes"), 6);
    }
}

on_both_backends! {
    /// panicThresholdPercent 50: 3 of 5 flagged (40 % healthy) ejects none and says Panic;
    /// 1 of 5 flagged ejects that one.
    async fn panic_threshold_ejects_nothing_when_most_of_the_fleet_is_flagged(backend: Backend) {
        let (cluster, detector) = setup(backend, 5).await;
        let breakers = breaker(&detector, 0.3, json!({"panicThresholdPercent": 50}));
        cluster.guard(breakers, periodic(600.0), false).await;
        let pods = cluster.wait_ready_pods("web", 5).await;
        detector.report(&pods[..3]);
        let ready = wait_ready_reason(&cluster, "Panic").await;
        assert!(
            ready["message"].as_str().unwrap_or_default().contains("2 of 5"),
            "{ready}"
        );
        wait_event_note(&cluster, "Panic", |note| note.contains("faulty")).await;
        // Several evaluations later, still nothing ejected.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(count(&cluster.traffic("web").await, "yes"), 5);

        detector.report(&pods[..1]);
        let traffic = wait_traffic(&cluster, "no", 1).await;
        assert_eq!(traffic[&pods[0]], "no");
        wait_ready_reason(&cluster, "Running").await;
        wait_event_note(&cluster, "PanicEnded", |note| note.contains("faulty")).await;
    }
}

on_both_backends! {
    /// maxEjectionsPerEvaluation 1 with 4 flagged pods: one ejection per evaluation.
    async fn ejection_rate_limit_ejects_one_pod_per_evaluation(backend: Backend) {
        let (cluster, detector) = setup(backend, 6).await;
        let period = 1.0;
        let breakers = breaker(&detector, period, json!({"maxEjectionsPerEvaluation": 1}));
        cluster.guard(breakers, periodic(600.0), false).await;
        let pods = cluster.wait_ready_pods("web", 6).await;
        detector.report(&pods[..4]);
        wait_traffic(&cluster, "no", 4).await;
        // Pods ejected by one evaluation share its instant as breakAt.
        let mut at: Vec<jiff::Timestamp> = Vec::new();
        for pod in &pods[..4] {
            let value = cluster.annotation(pod, "breaker/breakAt").await.expect("breakAt");
            at.push(value.parse().expect("an RFC 3339 time"));
        }
        at.sort();
        for pair in at.windows(2) {
            let gap = pair[1].duration_since(pair[0]);
            assert!(
                gap >= jiff::SignedDuration::from_secs_f64(period / 2.0),
                "two ejections {gap:?} apart, in one evaluation: {at:?}"
            );
        }
    }
}

on_both_backends! {
    /// retryAndKill evicts: a PodDisruptionBudget that allows no disruption keeps the pod
    /// (out of traffic, `KillBlocked` once); once it allows one, the pod is evicted and replaced.
    async fn kills_wait_for_the_disruption_budget(backend: Backend) {
        let (cluster, detector) = setup(backend, 3).await;
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web"},
            "spec": {"minAvailable": 3, "selector": {"matchLabels": {"app": "web"}}},
        }))
        .unwrap();
        pdbs.create(&PostParams::default(), &pdb).await.unwrap();
        let activator = json!({"mode": "retryAndKill", "period": 0.5, "maxRetryCount": 0});
        cluster.guard(breaker(&detector, 0.3, json!({})), activator, false).await;
        let pods = cluster.wait_ready_pods("web", 3).await;
        let doomed = pods[0].clone();
        detector.report(std::slice::from_ref(&doomed));

        let events = wait_event_note(&cluster, "KillBlocked", |note| note.contains(&doomed)).await;
        assert!(
            events.iter().any(|(_, note)| note.contains("PodDisruptionBudget")),
            "{events:?}"
        );
        // Tried again every second, still refused: the pod stays out, reported once.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let traffic = cluster.traffic("web").await;
        assert_eq!(traffic.get(&doomed).map(String::as_str), Some("no"), "{traffic:?}");
        let blocked = cluster.events_by("KillBlocked", &doomed).await;
        assert_eq!(blocked.len(), 1, "{blocked:?}");

        // The budget allows one disruption: the pod is evicted and replaced.
        let patch = json!({"spec": {"minAvailable": 2}});
        pdbs.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        eventually("the pod evicted and replaced", Duration::from_secs(20), || async {
            let traffic = cluster.traffic("web").await;
            if !traffic.contains_key(&doomed) && traffic.len() == 3 && count(&traffic, "yes") == 3 {
                Ok(())
            } else {
                Err(format!("{traffic:?}"))
            }
        })
        .await;
        wait_event_note(&cluster, "PodKilled", |note| note.contains(&doomed)).await;
    }
}

/// The pod condition `kubervisor.k8s.io/traffic` of a pod, if set.
async fn gate(cluster: &Cluster, pod: &str) -> Option<String> {
    let pods = cluster.pods("web").await;
    let conditions = pods.get(pod)?.status.as_ref()?.conditions.clone()?;
    conditions
        .into_iter()
        .find(|c| c.type_ == "kubervisor.k8s.io/traffic")
        .map(|c| c.status)
}

on_both_backends! {
    /// trafficControl readinessGate: the ejected pod leaves the endpoints through its gate
    /// condition, its labels never change, and it comes back after the period. A pod
    /// without the gate is reported and left alone.
    async fn readiness_gate_mode_takes_pods_out_of_endpoints_without_relabelling(backend: Backend) {
        let mut cluster = Cluster::start(backend).await;
        cluster.start_operator().await;
        let detector = CustomDetector::start().await;
        cluster.deploy_gated(3, 1).await;
        cluster
            .create_kvs(json!({
                "apiVersion": "kubervisor.k8s.io/v1alpha1",
                "kind": "KubervisorService",
                "metadata": {"name": "web"},
                "spec": {
                    "service": "web",
                    "trafficControl": "readinessGate",
                    "breakers": breaker(&detector, 0.3, json!({})),
                    "defaultActivator": periodic(2.0),
                },
            }))
            .await;
        // Three gated pods and the one without the gate serve.
        wait_endpoints(&cluster, 4).await;
        let pods = cluster.pods("web").await;
        let bare = pods
            .iter()
            .find(|(_, p)| p.metadata.labels.as_ref().is_some_and(|l| l["deployment"] == "web-bare"))
            .map(|(name, _)| name.clone())
            .expect("the pod without the gate");
        let victim = pods.keys().find(|name| **name != bare).unwrap().clone();
        // (On the real control plane the node simulator sets gates True at start: wait for
        // the adoption too.)
        eventually("every gated pod adopted, its gate True", Duration::from_secs(10), || async {
            let mut states = Vec::new();
            for name in pods.keys().filter(|n| **n != bare) {
                let traffic = cluster.annotation(name, "kubervisor/traffic").await;
                states.push((gate(&cluster, name).await, traffic));
            }
            let adopted = |(gate, traffic): &(Option<String>, Option<String>)| {
                gate.as_deref() == Some("True") && traffic.as_deref() == Some("yes")
            };
            if states.iter().all(adopted) { Ok(()) } else { Err(format!("{states:?}")) }
        })
        .await;
        let labels_before = cluster.pods("web").await[&victim].metadata.labels.clone();

        detector.report(std::slice::from_ref(&victim));
        wait_endpoints(&cluster, 3).await;
        let after = cluster.pods("web").await;
        assert_eq!(after[&victim].metadata.labels, labels_before, "no label changed");
        assert_eq!(gate(&cluster, &victim).await.as_deref(), Some("False"));
        assert_eq!(
            cluster.annotation(&victim, "kubervisor/traffic").await.as_deref(),
            Some("no")
        );
        wait_event_note(&cluster, "NoReadinessGate", |note| note.contains(&bare)).await;
        assert_eq!(cluster.label(&bare, "kubervisor/name").await, None, "left alone");

        detector.report(&[]);
        wait_endpoints(&cluster, 4).await;
        assert_eq!(gate(&cluster, &victim).await.as_deref(), Some("True"));
        assert_eq!(cluster.pods("web").await[&victim].metadata.labels, labels_before);
        wait_event_note(&cluster, "PodActivated", |note| note.contains(&victim)).await;
    }
}
