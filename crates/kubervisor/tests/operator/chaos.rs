//! Chaos: the operator keeps its promises while the API, the sources and the operator
//! itself fail. Each scenario drives a churn of verdicts (pods named anomalous and
//! cleared again, so ejections and re-activations keep happening), injects its fault,
//! and has the invariant monitor (crate `kubervisor-monitor`) judge the whole run: 0 violations.
//!
//! Faults injected by kubesim (error bursts, conflicts, 429, watches cut and expired, a
//! slow API) run on kubesim only; faults made from outside the API server (the API
//! unreachable through a proxy, hostile sources, the operator killed, the leader cut off
//! or its clock stepped) run on both backends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{
    ApiProxy, Backend, Cluster, CustomDetector, OperatorProcess, SteppedClock, eventually,
};
use crate::scenarios::{count, wait_ready_reason};
use kubervisor_monitor::{Limits, Monitor, MonitorConfig};
use kubesim::on_both_backends;

const PODS: usize = 6;
/// Pods that keep traffic whatever the detector says.
const FLOOR: u32 = 3;

/// A fleet of six pods guarded by one custom breaker (floor 3, evaluated every 0.3 s)
/// and a periodic activator (1 s), with the monitor watching.
struct Run {
    cluster: Cluster,
    detector: CustomDetector,
    monitor: Monitor,
    pods: Vec<String>,
}

/// The cluster, the detector and the fleet; the scenario starts its operator(s) before
/// [`guard`] (the operator installs the CRD the monitor watches).
async fn fleet(backend: Backend) -> (Cluster, CustomDetector) {
    let cluster = Cluster::start(backend).await;
    let detector = CustomDetector::start().await;
    cluster.deploy("web", PODS as i32, BTreeMap::new()).await;
    (cluster, detector)
}

async fn wait_crd(cluster: &Cluster) {
    eventually("the CRD to be served", Duration::from_secs(20), || async {
        cluster
            .kvs_api()
            .list(&Default::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
}

/// The KubervisorService of every churn: one custom breaker (floor 3, evaluated every
/// 0.3 s) and `activator`.
async fn guard_fleet(cluster: &Cluster, url: &str, activator: serde_json::Value) {
    let breakers = json!([{
        "name": "faulty", "evaluationPeriod": 0.3, "minPodsAvailableCount": FLOOR,
        "customService": url,
    }]);
    cluster.guard(breakers, activator, false).await;
}

/// The periodic activator (1 s) of most churns.
fn periodic_activator() -> serde_json::Value {
    json!({"mode": "periodic", "period": 1.0})
}

async fn guard(
    cluster: Cluster,
    detector: CustomDetector,
    url: &str,
    config: MonitorConfig,
) -> Run {
    guard_with(cluster, detector, url, config, periodic_activator()).await
}

/// [`guard`] with another activator.
async fn guard_with(
    cluster: Cluster,
    detector: CustomDetector,
    url: &str,
    config: MonitorConfig,
    activator: serde_json::Value,
) -> Run {
    guard_fleet(&cluster, url, activator).await;
    let monitor = Monitor::start(&cluster.kubeconfig, config).await;
    let pods = cluster.wait_ready_pods("web", PODS).await;
    Run {
        cluster,
        detector,
        monitor,
        pods,
    }
}

/// The pods the detector names at tick `i` of a churn.
fn churn_picks(i: u32, pods: &[String]) -> Vec<String> {
    let i = i as usize;
    let picks = if i.is_multiple_of(2) {
        vec![i, i + 2, i + 3, i + 5]
    } else {
        vec![i, i + 3]
    };
    picks.iter().map(|k| pods[k % pods.len()].clone()).collect()
}

impl Run {
    /// Names pods anomalous, different ones each tick: four (one more than the floor lets
    /// go) on even ticks, two on odd ones (so pods already out are named again while the
    /// floor would let more go), for `ticks` ticks, calling `fault` at each; then clears
    /// the verdicts.
    async fn churn(&self, ticks: u32, tick: Duration, mut fault: impl FnMut(u32, &Run)) {
        for i in 0..ticks {
            self.detector.report(&churn_picks(i, &self.pods));
            fault(i, self);
            // Pacing of the driver: the monitor, not this loop, judges what happens.
            tokio::time::sleep(tick).await;
        }
        self.detector.report(&[]);
        if let Some(sim) = &self.cluster.sim {
            sim.faults().clear();
        }
    }

    /// Calls `fault` every tick for `ticks` ticks, verdicts unchanged; then clears the faults.
    async fn churn_faults(&self, ticks: u32, tick: Duration, mut fault: impl FnMut(u32, &Run)) {
        for i in 0..ticks {
            fault(i, self);
            tokio::time::sleep(tick).await;
        }
        if let Some(sim) = &self.cluster.sim {
            sim.faults().clear();
        }
    }

    /// Every pod back in traffic, then the monitor's verdict: 0 violations, and some
    /// decisions made (the scenario exercised something).
    async fn settle_and_judge(self, within: Duration, min_decisions: usize) {
        let traffic = eventually("every pod back in traffic", within, || async {
            let traffic = self.cluster.traffic("web").await;
            if count(&traffic, "yes") == PODS {
                Ok(traffic)
            } else {
                Err(format!("{traffic:?}"))
            }
        })
        .await;
        assert_eq!(traffic.len(), PODS);
        let report = self.monitor.finish().await;
        report.assert_clean();
        assert!(
            report.decisions >= min_decisions,
            "only {} decision events: the scenario exercised too little",
            report.decisions
        );
    }

    /// Makes a pod unready or ready again on kubesim, as its readiness probe would (the
    /// write is sent in the background, so a fault hook can call it).
    fn set_ready(&self, pod: &str, ready: bool) {
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(self.cluster.client.clone(), &self.cluster.namespace);
        let patch = json!({"metadata": {"annotations": {
            kubesim::controllers::READY_ANNOTATION: if ready { "true" } else { "false" },
        }}});
        let pod = pod.to_string();
        tokio::spawn(async move {
            pods.patch(&pod, &Default::default(), &kube::api::Patch::Merge(&patch))
                .await
                .expect("the readiness annotation is written");
        });
    }

    fn sim(&self) -> &kubesim::Sim {
        self.cluster.sim.as_ref().expect("a kubesim fault")
    }
}

fn limits(extra: Duration) -> Limits {
    let base = Limits::default();
    Limits {
        restore_window: base.restore_window + extra,
        activation_slack: base.activation_slack + extra,
        ..base
    }
}

async fn on_kubesim(limits: Limits) -> Run {
    let (mut cluster, detector) = fleet(Backend::Kubesim).await;
    cluster.start_operator().await;
    let url = detector.url.clone();
    let config = MonitorConfig {
        limits,
        ..MonitorConfig::web(&cluster.namespace)
    };
    guard(cluster, detector, &url, config).await
}

const TICK: Duration = Duration::from_millis(700);

/// Bursts of 500 on pod patches and event creations, and of 503 on the lists that
/// follow cut watches: a failed pod write is decided again, a failed event is sent again,
/// nothing is lost or repeated. Event failures come every third tick: the publisher backs
/// off exponentially, so failures armed again every tick would meet each of its attempts
/// and hold every later event back past the end of the run (a burst that never ends is
/// the outage scenario's business).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_500_and_503_on_pod_patches_and_lists() {
    let run = on_kubesim(Limits::default()).await;
    run.churn(16, TICK, |i, run| {
        let faults = run.sim().faults();
        faults.clear();
        faults.fail_next("patch", "pods", 2, 500);
        if i % 3 == 1 {
            faults.fail_next("create", "events", 2, 500);
        }
        if i % 3 == 0 {
            faults.fail_next("list", "*", 2, 503);
            faults.expire_next_watches(3);
            faults.close_watches();
        }
    })
    .await;
    run.settle_and_judge(Duration::from_secs(10), 8).await;
}

/// 409 Conflict on pod patches: the pod is read again and decided again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_on_pod_patches() {
    let run = on_kubesim(Limits::default()).await;
    run.churn(16, TICK, |_, run| {
        run.sim().faults().fail_next("patch", "pods", 3, 409);
    })
    .await;
    run.settle_and_judge(Duration::from_secs(10), 8).await;
}

/// Bursts of three 429 with `Retry-After: 1` on any request every 2.8 s, and status
/// writes throttled all along: the operator waits as told (a write refused three times
/// waits 3 s, so the slack grows by as much), and a throttled status write, a mere
/// report, never holds up a decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_with_retry_after() {
    let run = on_kubesim(limits(Duration::from_secs(3))).await;
    run.churn(16, TICK, |i, run| {
        let faults = run.sim().faults();
        faults.fail_next_retry_after("patch", "kubervisorservices/status", 2, 429, 1);
        if i % 4 == 0 {
            faults.fail_next_retry_after("*", "*", 3, 429, 1);
        }
    })
    .await;
    run.settle_and_judge(Duration::from_secs(15), 8).await;
}

/// Every watch stream cut every 1.4 s, and the re-watches answered 410 Gone: the
/// operator's index relists and decides on what it lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_cut_every_few_seconds_and_gone_on_rewatch() {
    let run = on_kubesim(Limits::default()).await;
    run.churn(16, TICK, |i, run| {
        if i % 2 == 1 {
            let faults = run.sim().faults();
            faults.expire_next_watches(4);
            faults.close_watches();
        }
    })
    .await;
    run.settle_and_judge(Duration::from_secs(10), 8).await;
}

/// Three pods out for long (period 30 s), then two serving pods turn unready while every
/// watch is cut and expired every 1.4 s: the floor is restored (two pods given back
/// early) from what the relists show, within the restore window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_losses_while_watches_are_cut_are_made_good() {
    let (mut cluster, detector) = fleet(Backend::Kubesim).await;
    cluster.start_operator().await;
    let breakers = json!([{
        "name": "faulty", "evaluationPeriod": 0.3, "minPodsAvailableCount": FLOOR,
        "customService": detector.url,
    }]);
    cluster
        .guard(breakers, json!({"mode": "periodic", "period": 30.0}), false)
        .await;
    let monitor = Monitor::start(&cluster.kubeconfig, MonitorConfig::web(&cluster.namespace)).await;
    let pods = cluster.wait_ready_pods("web", PODS).await;
    let run = Run {
        cluster,
        detector,
        monitor,
        pods,
    };
    run.detector.report(&run.pods[..3]);
    eventually("three pods out", Duration::from_secs(10), || async {
        let traffic = run.cluster.traffic("web").await;
        if count(&traffic, "no") == 3 {
            Ok(())
        } else {
            Err(format!("{traffic:?}"))
        }
    })
    .await;
    run.churn_faults(8, TICK, |i, run| {
        let faults = run.sim().faults();
        faults.expire_next_watches(4);
        faults.close_watches();
        if i == 2 {
            run.pods[3..5].iter().for_each(|p| run.set_ready(p, false));
        }
    })
    .await;
    eventually(
        "two FloorRestored events",
        Duration::from_secs(10),
        || async {
            let restored = run.cluster.events_by_reason_on_pods("FloorRestored").await;
            if restored >= 2 {
                Ok(())
            } else {
                Err(format!("{restored}"))
            }
        },
    )
    .await;
    run.detector.report(&[]);
    run.pods[3..5].iter().for_each(|p| run.set_ready(p, true));
    let traffic = eventually(
        "5 pods serving, the last one out for its period",
        Duration::from_secs(10),
        || async {
            let traffic = run.cluster.traffic("web").await;
            if count(&traffic, "yes") == 5 {
                Ok(traffic)
            } else {
                Err(format!("{traffic:?}"))
            }
        },
    )
    .await;
    assert_eq!(traffic.len(), PODS);
    let report = run.monitor.finish().await;
    report.assert_clean();
}

/// Every request takes 1 s: writes, events and watches are late, never wrong. A
/// re-activation waits for its write (1 s) after the activator's tick; the slack allows
/// two requests more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_answering_in_one_second() {
    let run = on_kubesim(Limits {
        // Events go out one request at a time: 2 s per decision.
        settle: Duration::from_secs(30),
        ..limits(Duration::from_secs(2))
    })
    .await;
    run.sim()
        .faults()
        .add_latency("*", "*", Duration::from_secs(1));
    run.churn(8, Duration::from_millis(1500), |_, _| {}).await;
    run.settle_and_judge(Duration::from_secs(20), 4).await;
}

on_both_backends! {
    /// The API unreachable for 30 s in the middle of the churn (every connection of the
    /// operator dropped and refused): nothing is decided on a stale view, and what fell
    /// due meanwhile is done once the API is back; windows and slack grow by the outage.
    async fn the_api_unreachable_for_thirty_seconds(backend: Backend) {
        let outage = Duration::from_secs(30);
        let (mut cluster, detector) = fleet(backend).await;
        let proxy = ApiProxy::start(&cluster).await;
        cluster.start_replica_via("e2e", false, &proxy.kubeconfig).await;
        let url = detector.url.clone();
        let config = MonitorConfig {
            limits: limits(outage + Duration::from_secs(1)),
            ..MonitorConfig::web(&cluster.namespace)
        };
        let run = guard(cluster, detector, &url, config).await;
        let cut_at = Arc::new(Mutex::new(None::<Instant>));
        // Four ticks before the cut, the outage, and ten after it.
        let ticks = 14 + (outage.as_millis() / TICK.as_millis()) as u32;
        run.churn(ticks, TICK, |i, _| {
            let mut cut = cut_at.lock().unwrap();
            if i == 4 {
                proxy.cut();
                *cut = Some(Instant::now());
            }
            if cut.is_some_and(|at| at.elapsed() >= outage) {
                proxy.restore();
                *cut = None;
            }
        })
        .await;
        proxy.restore();
        run.settle_and_judge(Duration::from_secs(20), 6).await;
    }
}

/// How a hostile custom detector answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    /// A PodList of the pods it is told.
    Honest,
    InvalidJson,
    ServiceUnavailable,
    /// After 2 s, past the operator's 1 s timeout for custom detectors.
    Slow,
    /// Names pods that are not the Service's.
    Strangers,
}

struct HostileDetector {
    url: String,
    answer: Arc<Mutex<(Answer, Vec<String>)>>,
    _server: tokio::task::JoinHandle<()>,
}

impl HostileDetector {
    async fn start() -> HostileDetector {
        use axum::response::IntoResponse;
        let answer: Arc<Mutex<(Answer, Vec<String>)>> =
            Arc::new(Mutex::new((Answer::Honest, Vec::new())));
        let state = answer.clone();
        let app = axum::Router::new().route(
            "/faulty",
            axum::routing::get(move || {
                let state = state.clone();
                async move {
                    let (answer, names) = state.lock().unwrap().clone();
                    let list = |names: &[String]| {
                        let items: Vec<serde_json::Value> = names
                            .iter()
                            .map(|n| json!({"metadata": {"name": n}}))
                            .collect();
                        axum::Json(json!({"apiVersion": "v1", "kind": "PodList", "items": items}))
                            .into_response()
                    };
                    match answer {
                        Answer::Honest => list(&names),
                        Answer::InvalidJson => {
                            (axum::http::StatusCode::OK, "{\"items\": [{\"metadata\": ")
                                .into_response()
                        }
                        Answer::ServiceUnavailable => {
                            axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response()
                        }
                        Answer::Slow => {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            list(&names)
                        }
                        Answer::Strangers => list(&[
                            "web-stranger-1".to_string(),
                            "kube-apiserver".to_string(),
                            "other-app-0".to_string(),
                        ]),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/faulty", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HostileDetector {
            url,
            answer,
            _server: server,
        }
    }

    fn set(&self, answer: Answer, names: &[String]) {
        *self.answer.lock().unwrap() = (answer, names.to_vec());
    }
}

on_both_backends! {
    /// A custom detector that names pods while answering invalid JSON, 503, too slowly,
    /// or names pods outside the Service: nothing is ejected, the breaker reports a
    /// `SourceError`; an honest answer afterwards ejects as usual.
    async fn a_hostile_custom_detector_ejects_nothing(backend: Backend) {
        let (mut cluster, detector) = fleet(backend).await;
        cluster.start_operator().await;
        let hostile = HostileDetector::start().await;
        let config = MonitorConfig::web(&cluster.namespace);
        let run = guard(cluster, detector, &hostile.url, config).await;
        let named = run.pods[..2].to_vec();
        for answer in [Answer::InvalidJson, Answer::ServiceUnavailable, Answer::Slow] {
            hostile.set(answer, &named);
            eventually(
                &format!("a SourceError for {answer:?}"),
                Duration::from_secs(10),
                || async {
                    let status = run.cluster.status("web").await;
                    let result = &status["breakers"][0];
                    if result["result"] == "SourceError" { Ok(()) } else { Err(status.to_string()) }
                },
            )
            .await;
            assert_eq!(count(&run.cluster.traffic("web").await, "yes"), PODS, "{answer:?}");
        }
        hostile.set(Answer::Strangers, &named);
        eventually("the strangers judged, none managed", Duration::from_secs(10), || async {
            let status = run.cluster.status("web").await;
            let result = &status["breakers"][0];
            if result["result"] == "Ok" && result["anomalous"] == 3 && result["ejected"] == 0 {
                Ok(())
            } else {
                Err(status.to_string())
            }
        })
        .await;
        assert_eq!(count(&run.cluster.traffic("web").await, "yes"), PODS);
        assert!(run.cluster.events("PodEjected").await.is_empty());
        // Still working: an honest answer ejects.
        hostile.set(Answer::Honest, &named);
        eventually("the two named pods ejected", Duration::from_secs(10), || async {
            let traffic = run.cluster.traffic("web").await;
            if count(&traffic, "no") == 2 { Ok(()) } else { Err(format!("{traffic:?}")) }
        })
        .await;
        hostile.set(Answer::Honest, &[]);
        wait_ready_reason(&run.cluster, "Running").await;
        run.settle_and_judge(Duration::from_secs(10), 4).await;
    }
}

on_both_backends! {
    /// The operator's process SIGKILLed three times during the churn, at moments where
    /// ejections and re-activations are under way, and started again: state lives in the
    /// pods' labels and annotations, so nothing is lost or done twice. A decision due
    /// while the operator is down waits for its restart (about 1 s); the event of a write
    /// done just before a kill may die with the process (the monitor is told of kills).
    async fn the_operator_killed_mid_ejection_and_restarted(backend: Backend) {
        let (cluster, detector) = fleet(backend).await;
        let log = cluster.kubeconfig.with_file_name("operator.log");
        let process = OperatorProcess::spawn(&cluster, "e2e", false, log.clone());
        wait_crd(&cluster).await;
        let url = detector.url.clone();
        let config = MonitorConfig {
            limits: limits(Duration::from_secs(3)),
            ..MonitorConfig::web(&cluster.namespace)
        };
        let run = guard(cluster, detector, &url, config).await;
        let mut process = Some(process);
        let mut kills = 0;
        run.churn(16, TICK, |i, run| {
            if [3, 7, 11].contains(&i) {
                process.take().expect("running").kill();
                run.monitor.operator_killed();
                kills += 1;
                process = Some(OperatorProcess::spawn(&run.cluster, "e2e", false, log.clone()));
            }
        })
        .await;
        assert_eq!(kills, 3);
        let result = std::panic::AssertUnwindSafe(run.settle_and_judge(Duration::from_secs(15), 8));
        if let Err(panic) = futures::FutureExt::catch_unwind(result).await {
            eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
            std::panic::resume_unwind(panic);
        }
    }
}

on_both_backends! {
    /// The leader's wall clock stepped an hour forward mid-churn, then back (an NTP step,
    /// a resumed VM), its monotonic clock running on: the operator's clock follows the
    /// system clock at 5 % of the time that passes, so no ejection ends early (a step
    /// forward made every pod out due at once) or late (a step back kept them out an
    /// hour). Then the leader is restarted on a clock an hour ahead (a node set wrong) and,
    /// with pods out, replaced by one on time: the ejection times written an hour ahead
    /// are not believed, those pods are given back at once instead of an hour late.
    /// Periods of 5 s, so that pods are out, mid-period, when the clock steps.
    async fn clock_jumps_of_the_leader(backend: Backend) {
        const HOUR: i64 = 3_600;
        let (cluster, detector) = fleet(backend).await;
        let log = cluster.kubeconfig.with_file_name("operator.log");
        let clock = SteppedClock::new(0);
        let process = OperatorProcess::spawn_on(&cluster, "e2e", true, log.clone(), &clock);
        wait_crd(&cluster).await;
        let url = detector.url.clone();
        let config = MonitorConfig {
            lease: Some("kubervisor".into()),
            // A restart takes up to 2 s more (as when killed mid-ejection).
            limits: limits(Duration::from_secs(2)),
            ..MonitorConfig::web(&cluster.namespace)
        };
        let activator = json!({"mode": "periodic", "period": 5.0});
        let run = guard_with(cluster, detector, &url, config, activator).await;
        // Forward 1 s after the first ejections (4 s before they are due), back 5 s later.
        run.churn(18, TICK, |i, _| match i {
            2 => clock.set(HOUR),
            9 => clock.set(0),
            _ => {}
        })
        .await;
        // A replica starting on a clock an hour ahead takes every pod then out for overdue
        // (no process can tell a wrong clock from a long wait): it starts with all in.
        eventually("every pod back in traffic", Duration::from_secs(10), || async {
            let traffic = run.cluster.traffic("web").await;
            if count(&traffic, "yes") == PODS { Ok(()) } else { Err(format!("{traffic:?}")) }
        })
        .await;
        let mut process = Some(process);
        let mut restart = |run: &Run, on: Option<&SteppedClock>| {
            process.take().expect("running").kill();
            run.monitor.operator_killed();
            process = Some(match on {
                Some(clock) => OperatorProcess::spawn_on(&run.cluster, "e2e", true, log.clone(), clock),
                None => OperatorProcess::spawn(&run.cluster, "e2e", true, log.clone()),
            });
        };
        clock.set(HOUR);
        restart(&run, Some(&clock));
        run.churn(14, TICK, |i, run| {
            if i == 8 {
                restart(run, None);
            }
        })
        .await;
        let ahead: Vec<String> = run
            .cluster
            .events("PodActivated")
            .await
            .into_iter()
            .filter(|(_, note)| note.contains("ahead of the operator's clock"))
            .map(|(pod, _)| pod)
            .collect();
        let result = std::panic::AssertUnwindSafe(run.settle_and_judge(Duration::from_secs(15), 12));
        if let Err(panic) = futures::FutureExt::catch_unwind(result).await {
            eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
            std::panic::resume_unwind(panic);
        }
        drop(process);
        assert!(
            !ahead.is_empty(),
            "no pod was out, ejected an hour ahead, when the replica on time took over"
        );
    }
}

on_both_backends! {
    /// Two replicas with leader election, each reaching the API through its own proxy;
    /// the leader's is cut mid-churn. The leader steps down before its lease can expire,
    /// the standby takes over only once it has (client-go's 15 s), and then acts; nothing
    /// is written by a replica that does not hold the Lease. Pods due meanwhile wait for
    /// the takeover, so the activation slack grows by the lease duration.
    async fn the_leader_cut_off_from_the_api_and_the_standby_takes_over(backend: Backend) {
        let (mut cluster, detector) = fleet(backend).await;
        let (a, b) = (ApiProxy::start(&cluster).await, ApiProxy::start(&cluster).await);
        cluster.start_replica_via("replica-a", true, &a.kubeconfig).await;
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(cluster.client.clone(), &cluster.namespace);
        eventually("replica-a to hold the Lease", Duration::from_secs(10), || async {
            let holder = leases
                .get_opt("kubervisor")
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity);
            if holder.as_deref() == Some("replica-a") { Ok(()) } else { Err(format!("{holder:?}")) }
        })
        .await;
        cluster.start_replica_via("replica-b", true, &b.kubeconfig).await;
        let url = detector.url.clone();
        let config = MonitorConfig {
            lease: Some("kubervisor".into()),
            limits: limits(Duration::from_secs(17)),
            ..MonitorConfig::web(&cluster.namespace)
        };
        let run = guard(cluster, detector, &url, config).await;
        run.churn(30, TICK, |i, _| {
            if i == 3 {
                a.cut();
            }
        })
        .await;
        let by_b = run.cluster.events("PodEjected").await;
        let instances: Vec<String> = {
            let events: kube::Api<k8s_openapi::api::events::v1::Event> =
                kube::Api::namespaced(run.cluster.client.clone(), &run.cluster.namespace);
            let list = events.list(&Default::default()).await.unwrap().items;
            list.into_iter()
                .filter(|e| e.reason.as_deref() == Some("PodEjected"))
                .filter_map(|e| e.reporting_instance)
                .collect()
        };
        assert!(
            instances.iter().any(|i| i == "replica-a") && instances.iter().any(|i| i == "replica-b"),
            "both replicas acted in turn: {instances:?} ({} ejections)",
            by_b.len()
        );
        // Back on the network, the old leader stays a standby.
        a.restore();
        run.settle_and_judge(Duration::from_secs(15), 8).await;
    }
}

on_both_backends! {
    /// Prometheus killed (SIGKILL) in the middle of a churn of error rates and started
    /// again 8 s later on the same address and data, as a restarted pod with its volume:
    /// while it is down the breaker reports `SourceError` and ejects nothing, the
    /// activator still gives pods back on time, and decisions resume once it answers.
    async fn prometheus_killed_and_started_again(backend: Backend) {
        const ERRORS: &str = "sim.kubervisor.io/error-rate";
        let outage = Duration::from_secs(8);
        let (cluster, mut prometheus, _dir, pods) =
            crate::scenarios::prometheus::cluster_with_prometheus(backend, PODS as i32).await;
        let breakers = json!([{
            "name": "errors", "evaluationPeriod": 1, "minPodsAvailableCount": FLOOR,
            "discreteValueOutOfList": {
                "prometheusService": prometheus.address(),
                "promQL": "sum by (code, pod) (increase(http_requests_total{service=\"web\"}[3s]))",
                "key": "code", "podNamekey": "pod", "goodValues": ["200"],
                "tolerance": 50, "minActivity": 10
            }
        }]);
        cluster
            .guard(breakers, json!({"mode": "periodic", "period": 2.0}), false)
            .await;
        let config = MonitorConfig {
            limits: limits(Duration::from_secs(1)),
            ..MonitorConfig::web(&cluster.namespace)
        };
        let monitor = Monitor::start(&cluster.kubeconfig, config).await;
        cluster.wait_ready_pods("web", PODS).await;
        // Two pods fail at a time, different ones every 3 s; Prometheus is down from the
        // fourth round to the sixth.
        for round in 0..10usize {
            for (k, pod) in pods.iter().enumerate() {
                let bad = k == round % PODS || k == (round + 3) % PODS;
                cluster
                    .annotate(pod, ERRORS, if bad { "0.8" } else { "0" })
                    .await;
            }
            if round == 3 {
                prometheus.kill().await;
                eventually(
                    "the breaker to report the source error",
                    outage,
                    || async {
                        let status = cluster.status("web").await;
                        let result = &status["breakers"][0]["result"];
                        if result == "SourceError" {
                            Ok(())
                        } else {
                            Err(status.to_string())
                        }
                    },
                )
                .await;
                tokio::time::sleep(outage.saturating_sub(Duration::from_secs(3))).await;
                prometheus
                    .start_again()
                    .await
                    .expect("Prometheus starts again on its address");
            } else {
                // Pacing of the driver: the monitor, not this loop, judges what happens.
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
        for pod in &pods {
            cluster.annotate(pod, ERRORS, "0").await;
        }
        eventually("every pod back in traffic", Duration::from_secs(30), || async {
            let traffic = cluster.traffic("web").await;
            if count(&traffic, "yes") == PODS {
                Ok(())
            } else {
                Err(format!("{traffic:?}"))
            }
        })
        .await;
        let report = monitor.finish().await;
        report.assert_clean();
        assert!(
            report.decisions >= 4,
            "only {} decision events: the scenario exercised too little",
            report.decisions
        );
    }
}

/// How long a namespace deleted with a KubervisorService inside may take to go: the
/// namespace controller waits 5 s, deletes the pods, then the rest once they are gone,
/// and may look again only seconds later.
const NAMESPACE_GONE_WITHIN: Duration = Duration::from_secs(45);

/// One sample of the operator's `/metrics`: the value of each series whose name is
/// `metric` and whose labels include `namespace="NS"`, summed.
async fn metric(addr: std::net::SocketAddr, metric: &str, namespace: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    let label = format!("namespace=\"{namespace}\"");
    let values: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// What still holds a namespace being deleted, for a failure to show.
async fn what_holds(cluster: &Cluster, namespace: &str) -> String {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    let ns = kube::Api::<Namespace>::all(cluster.client.clone())
        .get_opt(namespace)
        .await;
    let conditions = match ns {
        Ok(Some(ns)) => ns
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.status == "True")
            .map(|c| c.message.unwrap_or_default())
            .collect::<Vec<_>>()
            .join("; "),
        other => format!("{other:?}"),
    };
    let kvs: Vec<String> = kube::Api::<kubervisor_api::KubervisorService>::namespaced(
        cluster.client.clone(),
        namespace,
    )
    .list(&Default::default())
    .await
    .map(|l| l.items)
    .unwrap_or_default()
    .into_iter()
    .map(|k| {
        format!(
            "KubervisorService {} finalizers {:?} deleting {}",
            kube::ResourceExt::name_any(&k),
            k.metadata.finalizers,
            k.metadata.deletion_timestamp.is_some()
        )
    })
    .collect();
    let pods = kube::Api::<Pod>::namespaced(cluster.client.clone(), namespace)
        .list(&Default::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or_default();
    format!("conditions: [{conditions}], {kvs:?}, {pods} pods")
}

on_both_backends! {
    /// Two namespaces, each with a fleet and a KubervisorService under churn; one of them
    /// is deleted mid-churn. It goes within a bound: its pods are deleted first, then its
    /// KubervisorService, whose finalizer the operator removes although the pods are gone
    /// and every event it publishes there is refused (403, the namespace terminating). The
    /// operator's task for it ends (its series go, its reconciles stop), the operator keeps
    /// running and keeps deciding in the other namespace, where the monitor sees 0
    /// violations.
    ///
    /// On kubesim one operator watches every namespace, so the deleted namespace's refusals
    /// meet the other's work in one process (one event publisher, one manager). The real
    /// control plane is shared with other tests, whose resources an operator watching every
    /// namespace would act on: there each namespace has an operator of its own.
    async fn a_namespace_deleted_with_its_kubervisor_service_inside(backend: Backend) {
        let (mut cluster, detector) = fleet(backend).await;
        let mut doomed = cluster.another_namespace("doomed").await;
        let doomed_detector = CustomDetector::start().await;
        doomed.deploy("web", PODS as i32, BTreeMap::new()).await;
        let everywhere = cluster.sim.is_some();
        let (metrics, doomed_metrics) = if everywhere {
            let addr = cluster.start_operator_watching(None).await;
            (addr, addr)
        } else {
            let ns = cluster.namespace.clone();
            let survivor = cluster.start_operator_watching(Some(&ns)).await;
            let ns = doomed.namespace.clone();
            (survivor, doomed.start_operator_watching(Some(&ns)).await)
        };
        let doomed_ns = doomed.namespace.clone();
        let survivor_ns = cluster.namespace.clone();
        guard_fleet(&doomed, &doomed_detector.url, periodic_activator()).await;
        let doomed_pods = doomed.wait_ready_pods("web", PODS).await;
        let url = detector.url.clone();
        let config = MonitorConfig::web(&survivor_ns);
        let run = guard(cluster, detector, &url, config).await;

        // Both fleets churn; the namespace is deleted at the fifth tick, and watched
        // until it is gone.
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(run.cluster.client.clone());
        let mut deletion = None;
        run.churn(12, TICK, |i, _| {
            doomed_detector.report(&churn_picks(i, &doomed_pods));
            if i == 4 {
                let (namespaces, name) = (namespaces.clone(), doomed_ns.clone());
                deletion = Some(tokio::spawn(async move {
                    let deleted_at = jiff::Timestamp::now();
                    let started = Instant::now();
                    namespaces
                        .delete(&name, &Default::default())
                        .await
                        .expect("the namespace deletion is accepted");
                    eventually("the deleted namespace to be gone", NAMESPACE_GONE_WITHIN, || async {
                        match namespaces.get_opt(&name).await {
                            Ok(None) => Ok(()),
                            other => Err(format!("{other:?}")),
                        }
                    })
                    .await;
                    (deleted_at, jiff::Timestamp::now(), started.elapsed())
                }));
            }
        })
        .await;
        let deletion = deletion.expect("the namespace was deleted").await;
        let Ok((deleted_at, gone_at, took)) = deletion else {
            panic!(
                "the deleted namespace is not gone after {NAMESPACE_GONE_WITHIN:?}: {}",
                what_holds(&run.cluster, &doomed_ns).await
            );
        };
        eprintln!("the namespace went {took:?} after its deletion");
        // Upstream waits 5 s before emptying a namespace: a namespace gone sooner was
        // deleted at once, with nothing refused and no finalizer honoured, which would let
        // an operator that holds or trips over a deletion pass.
        assert!(
            took >= Duration::from_secs(4),
            "the namespace went {took:?} after its deletion: it never terminated"
        );
        assert_eq!(
            what_holds(&run.cluster, &doomed_ns).await,
            "conditions: [Ok(None)], [], 0 pods",
            "the deleted namespace left something behind"
        );

        // Refused events there never held back the other namespace's: decisions there
        // were published while the deleted namespace refused every event.
        let published = |reasons: &'static [&'static str], from: jiff::Timestamp, to: jiff::Timestamp| {
            let events: kube::Api<k8s_openapi::api::events::v1::Event> =
                kube::Api::namespaced(run.cluster.client.clone(), &survivor_ns);
            async move {
                events
                    .list(&Default::default())
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .filter(|e| e.reason.as_deref().is_some_and(|r| reasons.contains(&r)))
                    .filter(|e| e.event_time.as_ref().is_some_and(|t| t.0 > from && t.0 < to))
                    .count()
            }
        };
        let decisions = &["PodEjected", "PodActivated"];
        let while_terminating = published(
            decisions,
            deleted_at + jiff::SignedDuration::from_secs(2),
            gone_at - jiff::SignedDuration::from_secs(1),
        )
        .await;
        assert!(
            while_terminating >= 2,
            "{while_terminating} decision events published in the other namespace while the deleted one terminated"
        );

        // The task of the gone resource has ended; the operator runs on.
        assert!(run.cluster.operator_running("e2e") && (everywhere || doomed.operator_running("e2e")));
        eventually("the gone resource's series to go", Duration::from_secs(10), || async {
            let items = metric(doomed_metrics, "kubervisor_item_gauge", &doomed_ns).await;
            let pods = metric(doomed_metrics, "kubervisor_breaker_gauge", &doomed_ns).await;
            if items == Some(0.0) && pods.is_none() { Ok(()) } else { Err(format!("items {items:?}, pods {pods:?}")) }
        })
        .await;
        let reconciles = "kubervisor_reconcile_duration_seconds_count";
        let doomed_reconciles = metric(doomed_metrics, reconciles, &doomed_ns).await;
        let survivor_reconciles = metric(metrics, reconciles, &survivor_ns).await;

        run.churn(8, TICK, |_, _| {}).await;
        assert!(run.cluster.operator_running("e2e") && (everywhere || doomed.operator_running("e2e")));
        assert_eq!(
            metric(doomed_metrics, reconciles, &doomed_ns).await,
            doomed_reconciles,
            "the gone resource is still reconciled"
        );
        let later = metric(metrics, reconciles, &survivor_ns).await;
        assert!(later > survivor_reconciles, "{later:?} reconciles, {survivor_reconciles:?} before");
        let ejected_since = published(&["PodEjected"], gone_at, jiff::Timestamp::now()).await;
        assert!(ejected_since >= 2, "{ejected_since} ejections since the namespace went");
        run.settle_and_judge(Duration::from_secs(10), 8).await;
    }
}
