//! API faults the operator must live with, injected by kubesim.

use std::time::{Duration, Instant};

use crate::harness::{Backend, Cluster};
use crate::scenarios::{periodic, setup, wait_traffic};

fn patches_of_pods(cluster: &Cluster) -> u64 {
    let sim = cluster.sim.as_ref().expect("kubesim");
    sim.request_counts()
        .get(&("patch".to_string(), "pods".to_string()))
        .copied()
        .unwrap_or(0)
}

/// Three pods on kubesim, one custom breaker (floor 1, evaluated every 0.3 s) and an
/// activator that gives nothing back during a test.
async fn three_pods_guarded() -> (Cluster, crate::harness::CustomDetector, Vec<String>) {
    let (cluster, detector) = setup(Backend::Kubesim, 3).await;
    let breakers = serde_json::json!([{
        "name": "faulty", "evaluationPeriod": 0.3, "minPodsAvailableCount": 1,
        "customService": detector.url,
    }]);
    cluster.guard(breakers, periodic(600.0), false).await;
    let pods = cluster.wait_ready_pods("web", 3).await;
    (cluster, detector, pods)
}

/// The API server sheds load with 429 and `Retry-After: 1`: the ejection waits as told
/// (twice), then goes through, with one request per attempt.
#[tokio::test]
async fn a_429_with_retry_after_is_honoured_before_the_write_is_tried_again() {
    let (cluster, detector, pods) = three_pods_guarded().await;
    let before = patches_of_pods(&cluster);
    cluster
        .sim
        .as_ref()
        .unwrap()
        .faults()
        .fail_next_retry_after("patch", "pods", 2, 429, 1);
    let asked = Instant::now();
    detector.report(&pods[..1]);
    wait_traffic(&cluster, "no", 1).await;
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "ejected {took:?} after the verdict: the two Retry-After waits were not honoured"
    );
    assert_eq!(
        patches_of_pods(&cluster) - before,
        3,
        "two refused attempts and one that went through"
    );
}

/// [`three_pods_guarded`], with kubesim holding every pod patch for an hour and the
/// detector reporting one pod: returns once the ejection's patch has been sent.
async fn ejection_held_by_the_api() -> (Cluster, crate::harness::CustomDetector) {
    let (cluster, detector, pods) = three_pods_guarded().await;
    let before = patches_of_pods(&cluster);
    let faults = cluster.sim.as_ref().unwrap().faults();
    faults.add_latency("patch", "pods", Duration::from_secs(3600));
    detector.report(&pods[..1]);
    crate::harness::eventually(
        "the ejection to be sent",
        Duration::from_secs(10),
        || async {
            (patches_of_pods(&cluster) > before)
                .then_some(())
                .ok_or_else(|| "no pod patch yet".to_string())
        },
    )
    .await;
    (cluster, detector)
}

/// While a pod write waits for the API (kubesim holds it for an hour, the operator gives
/// up after 15 s), the resource's breaker goes on being evaluated: decisions do not wait
/// for the writes on their way.
#[tokio::test]
async fn the_breakers_go_on_while_a_write_waits_for_the_api() {
    let (cluster, detector) = ejection_held_by_the_api().await;
    let faults = cluster.sim.as_ref().unwrap().faults();
    let queried = detector.queries();
    // Ten periods of 0.3 s, well before the held write times out.
    crate::harness::eventually(
        "the breaker to be evaluated again",
        Duration::from_secs(8),
        || async {
            let since = detector.queries() - queried;
            (since >= 10)
                .then_some(())
                .ok_or_else(|| format!("{since} evaluations since the write was sent"))
        },
    )
    .await;
    assert_eq!(
        cluster
            .traffic("web")
            .await
            .values()
            .filter(|t| *t == "no")
            .count(),
        0,
        "the held write is not done yet"
    );
    faults.clear();
    wait_traffic(&cluster, "no", 1).await;
}

/// A pod write sent into a connection that never answers (kubesim holds it for an hour)
/// fails after the operator's write timeout instead of holding the resource's task: once
/// the API answers again, the ejection is decided again and goes through.
#[tokio::test]
async fn a_write_that_never_gets_an_answer_times_out_and_is_decided_again() {
    let (cluster, _detector) = ejection_held_by_the_api().await;
    let faults = cluster.sim.as_ref().unwrap().faults();
    faults.clear();
    let asked = Instant::now();
    wait_traffic(&cluster, "no", 1).await;
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(5),
        "ejected {took:?} after the API answered again: the held write cannot have timed out yet"
    );
}

/// While a new resource's finalizer write waits for the API (kubesim holds it for an
/// hour, the operator gives up after 15 s), its breaker is evaluated already: at 100,000
/// pods that write queues behind the fleet's adoption patches. Its pods are written only
/// once the finalizer write is back.
#[tokio::test]
async fn the_breakers_start_while_the_finalizer_write_waits_for_the_api() {
    let (cluster, detector) = setup(Backend::Kubesim, 3).await;
    let before = patches_of_pods(&cluster);
    let faults = cluster.sim.as_ref().unwrap().faults();
    faults.add_latency("patch", "kubervisorservices", Duration::from_secs(3600));
    let breakers = serde_json::json!([{
        "name": "faulty", "evaluationPeriod": 0.3, "minPodsAvailableCount": 1,
        "customService": detector.url,
    }]);
    cluster.guard(breakers, periodic(600.0), false).await;
    crate::harness::eventually(
        "the breaker to be evaluated",
        Duration::from_secs(8),
        || async {
            let queried = detector.queries();
            (queried >= 5)
                .then_some(())
                .ok_or_else(|| format!("{queried} evaluations while the finalizer is held"))
        },
    )
    .await;
    assert_eq!(
        patches_of_pods(&cluster) - before,
        0,
        "no pod is written before the finalizer write is back"
    );
}
