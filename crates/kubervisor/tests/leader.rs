//! Leader election on a Lease, against the kubesim API emulator.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use kubervisor::leader::{self, LeaderHandle, LeaseConfig};
use kubesim::{Sim, SimConfig};
use tokio::sync::watch;
use tokio::time::Instant;

const NAMESPACE: &str = "default";

/// Short durations so the scenarios take seconds: lease 2 s, renew deadline 1.5 s, retry 200 ms.
fn config(lease: &str, identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..LeaseConfig::new(NAMESPACE, lease, identity)
    }
}

fn candidate(sim: &Sim, config: LeaseConfig) -> LeaderHandle {
    leader::spawn(sim.client(), config).expect("a valid lease configuration")
}

/// Waits until the receiver shows `value`; false if `within` passed first.
async fn reaches(rx: &mut watch::Receiver<bool>, value: bool, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, rx.wait_for(|v| *v == value)).await,
        Ok(Ok(_))
    )
}

async fn read_lease(sim: &Sim, name: &str) -> LeaseSpec {
    let api: Api<Lease> = Api::namespaced(sim.client(), NAMESPACE);
    api.get(name)
        .await
        .expect("the lease exists")
        .spec
        .expect("the lease has a spec")
}

async fn start_sim() -> Sim {
    Sim::start(SimConfig::default())
        .await
        .expect("kubesim starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_never_lead_at_the_same_moment() {
    let sim = start_sim().await;
    let a = candidate(&sim, config("race", "a"));
    let b = candidate(&sim, config("race", "b"));
    let (mut ra, mut rb) = (a.subscribe(), b.subscribe());

    let first = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::select! {
            _ = ra.wait_for(|v| *v) => "a",
            _ = rb.wait_for(|v| *v) => "b",
        }
    })
    .await
    .expect("one candidate leads within 5 s");

    // Sample over longer than a lease duration, so several renewals happen meanwhile.
    let until = Instant::now() + Duration::from_secs(4);
    let mut samples = 0;
    while Instant::now() < until {
        let leaders = [a.is_leading(), b.is_leading()];
        assert_eq!(
            leaders.iter().filter(|l| **l).count(),
            1,
            "exactly one leader at every moment, saw {leaders:?}"
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(samples > 50, "sampled {samples} times");
    assert!(
        if first == "a" {
            a.is_leading()
        } else {
            b.is_leading()
        },
        "the first leader keeps leading while healthy"
    );
    let spec = read_lease(&sim, "race").await;
    assert_eq!(spec.holder_identity.as_deref(), Some(first));
    assert_eq!(spec.lease_duration_seconds, Some(2));

    a.release().await;
    b.release().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_racing_for_a_missing_lease_elect_exactly_one() {
    let sim = start_sim().await;
    let handles: Vec<LeaderHandle> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|id| candidate(&sim, config("fresh", id)))
        .collect();
    let receivers: Vec<_> = handles.iter().map(LeaderHandle::subscribe).collect();
    let any_leads = futures::future::select_all(receivers.into_iter().map(|mut rx| {
        Box::pin(async move {
            let _ = rx.wait_for(|v| *v).await;
        })
    }));
    tokio::time::timeout(Duration::from_secs(5), any_leads)
        .await
        .expect("one candidate leads within 5 s");

    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let leaders: Vec<bool> = handles.iter().map(LeaderHandle::is_leading).collect();
        assert_eq!(leaders.iter().filter(|l| **l).count(), 1, "{leaders:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spec = read_lease(&sim, "fresh").await;
    let leader = ["a", "b", "c", "d"]
        .into_iter()
        .zip(&handles)
        .find(|(_, h)| h.is_leading())
        .map(|(id, _)| id);
    assert_eq!(spec.holder_identity.as_deref(), leader);
    assert_eq!(
        spec.lease_transitions,
        Some(0),
        "the creator won; nobody took over"
    );
    for handle in handles {
        handle.release().await;
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_taken_over_at_once() {
    let sim = start_sim().await;
    // A long lease: takeover within far less than it proves the release, not expiry, did it.
    let long = |identity| LeaseConfig {
        lease_duration: Duration::from_secs(30),
        renew_deadline: Duration::from_secs(20),
        ..config("handover", identity)
    };
    let a = candidate(&sim, long("a"));
    let mut ra = a.subscribe();
    assert!(
        reaches(&mut ra, true, Duration::from_secs(5)).await,
        "a leads"
    );
    let b = candidate(&sim, long("b"));
    let mut rb = b.subscribe();
    assert!(
        !reaches(&mut rb, true, Duration::from_secs(1)).await,
        "b stands by while a holds the lease"
    );

    let released = Instant::now();
    a.release().await;
    assert!(!*ra.borrow(), "a stops leading when it releases");
    assert!(
        reaches(&mut rb, true, Duration::from_secs(2)).await,
        "b takes over within 2 s of the release"
    );
    assert!(released.elapsed() < Duration::from_secs(3));

    let spec = read_lease(&sim, "handover").await;
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(
        spec.lease_transitions,
        Some(1),
        "one handover, one transition"
    );
    assert_eq!(spec.lease_duration_seconds, Some(30));

    b.release().await;
    let spec = read_lease(&sim, "handover").await;
    assert_eq!(spec.holder_identity, None, "release clears the holder");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_once_its_lease_expires() {
    let sim = start_sim().await;
    let a = candidate(&sim, config("crash", "a"));
    let mut ra = a.subscribe();
    assert!(
        reaches(&mut ra, true, Duration::from_secs(5)).await,
        "a leads"
    );
    let b = candidate(&sim, config("crash", "b"));
    let mut rb = b.subscribe();
    assert!(
        !reaches(&mut rb, true, Duration::from_millis(500)).await,
        "b stands by"
    );

    // Dropping the handle aborts the election without releasing, as a crash would.
    drop(a);
    assert!(!*ra.borrow(), "a dropped election reports not leading");
    assert!(
        !reaches(&mut rb, true, Duration::from_secs(1)).await,
        "b respects the dead leader's unexpired lease"
    );
    assert!(
        reaches(&mut rb, true, Duration::from_secs(4)).await,
        "b takes over once the lease expires"
    );
    let spec = read_lease(&sim, "crash").await;
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));

    b.release().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_foreign_lease_is_taken_after_a_full_duration_by_our_clock() {
    let sim = start_sim().await;
    let api: Api<Lease> = Api::namespaced(sim.client(), NAMESPACE);
    let long_ago = MicroTime(jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1));
    api.create(
        &PostParams::default(),
        &Lease {
            metadata: ObjectMeta {
                name: Some("stale".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("ghost".into()),
                lease_duration_seconds: Some(2),
                acquire_time: Some(long_ago.clone()),
                renew_time: Some(long_ago),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        },
    )
    .await
    .expect("create the ghost's lease");

    let a = candidate(&sim, config("stale", "a"));
    let mut ra = a.subscribe();
    // The renewTime an hour ago is not trusted: another node's clock may be off.
    assert!(
        !reaches(&mut ra, true, Duration::from_millis(1500)).await,
        "a waits a lease duration from when it first saw the record"
    );
    assert!(
        reaches(&mut ra, true, Duration::from_secs(3)).await,
        "a takes the expired lease"
    );
    let spec = read_lease(&sim, "stale").await;
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_transitions, Some(4));
    let acquired = spec.acquire_time.expect("acquireTime is set on takeover").0;
    assert!(jiff::Timestamp::now().duration_since(acquired) < jiff::SignedDuration::from_secs(60));

    a.release().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_renewals_fail_steps_down_within_the_renew_deadline() {
    let sim = start_sim().await;
    let cfg = config("failing", "a");
    let renew_deadline = cfg.renew_deadline;
    let a = candidate(&sim, cfg);
    let mut ra = a.subscribe();
    assert!(
        reaches(&mut ra, true, Duration::from_secs(5)).await,
        "a leads"
    );

    sim.faults().fail_next("*", "leases", 1_000_000, 500);
    // The deadline counts from the last good renewal, which was before the faults began.
    let slack = Duration::from_millis(300);
    assert!(
        reaches(&mut ra, false, renew_deadline + slack).await,
        "a steps down within the renew deadline"
    );

    // Once the API answers again, the record still names a, so a leads again.
    sim.faults().clear();
    assert!(
        reaches(&mut ra, true, Duration::from_secs(3)).await,
        "a leads again after the API recovers"
    );
    a.release().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_renewals_hang_steps_down_within_the_renew_deadline() {
    let sim = start_sim().await;
    let cfg = config("hanging", "a");
    let renew_deadline = cfg.renew_deadline;
    let a = candidate(&sim, cfg);
    let mut ra = a.subscribe();
    assert!(
        reaches(&mut ra, true, Duration::from_secs(5)).await,
        "a leads"
    );

    sim.faults()
        .add_latency("*", "leases", Duration::from_secs(30));
    let slack = Duration::from_millis(300);
    assert!(
        reaches(&mut ra, false, renew_deadline + slack).await,
        "a steps down within the renew deadline although the request never returns"
    );
    sim.faults().clear();
    drop(a);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_releases_leaves_the_leader_alone() {
    let sim = start_sim().await;
    let a = candidate(&sim, config("standby", "a"));
    let mut ra = a.subscribe();
    assert!(
        reaches(&mut ra, true, Duration::from_secs(5)).await,
        "a leads"
    );
    let b = candidate(&sim, config("standby", "b"));
    assert!(!b.is_leading());
    b.release().await;
    assert!(
        !reaches(&mut ra, false, Duration::from_secs(1)).await,
        "a standby's release does not touch the leader's lease"
    );
    assert_eq!(
        read_lease(&sim, "standby").await.holder_identity.as_deref(),
        Some("a")
    );
    a.release().await;
    sim.shutdown().await;
}

#[test]
fn configurations_that_could_split_the_brain_are_refused() {
    let good = config("x", "a");
    assert!(good.validate().is_ok());
    assert!(LeaseConfig::new("ns", "x", "a").validate().is_ok());

    let deadline_too_long = LeaseConfig {
        renew_deadline: Duration::from_secs(2),
        ..good.clone()
    };
    let message = deadline_too_long
        .validate()
        .expect_err("renew deadline must be shorter than the lease")
        .to_string();
    assert!(message.contains("default/x"), "{message}");
    assert!(message.contains("renew_deadline"), "{message}");

    let no_identity = LeaseConfig {
        identity: String::new(),
        ..good.clone()
    };
    assert!(no_identity.validate().is_err());

    let retry_too_long = LeaseConfig {
        retry_period: Duration::from_millis(1400),
        ..good
    };
    assert!(retry_too_long.validate().is_err());
}
