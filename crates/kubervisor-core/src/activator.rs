//! The activator: what happens to ejected pods once their time has come.

use std::fmt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kubervisor_api::pod::Traffic;
use kubervisor_api::{ActivatorMode, ResolvedActivator, ResolvedSpec};

use crate::PodView;

/// What the activator does with one ejected pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Give it traffic again (`traffic=yes`).
    Activate,
    /// Park it for investigation (`traffic=pause`).
    Pause,
    /// Delete it, so that its controller replaces it.
    Kill,
}

/// A decision on one ejected pod; its `Display` is the reason given in events and logs.
#[derive(Clone, Debug, PartialEq)]
pub struct Activation {
    pub pod: String,
    pub action: Action,
    pub mode: ActivatorMode,
    pub reason: ActivationReason,
}

/// Why the activator acts on a pod now.
#[derive(Clone, Debug, PartialEq)]
pub enum ActivationReason {
    /// Its time out of traffic is over.
    Due {
        break_at: Timestamp,
        out_for: Duration,
        period: Duration,
        retries: u32,
    },
    /// Its ejection time is `ahead` of the clock, beyond [`CLOCK_SKEW_ALLOWANCE`]: no
    /// ejection happened in the future, so a clock stepped back (or the replica that
    /// ejected it ran ahead), and how long it has been out cannot be known. Waiting for
    /// that time would keep it out as long as the clock was off: it is given back now.
    AheadOfClock {
        break_at: Timestamp,
        ahead: Duration,
        period: Duration,
    },
    /// Ejected more often than `maxRetryCount`: paused, `paused` of at most `max_paused` now.
    Exhausted {
        retries: u32,
        max_retry_count: u32,
        paused: usize,
        max_pause_count: u32,
    },
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (pod, mode) = (&self.pod, self.mode.as_str());
        match (&self.reason, self.action) {
            (
                ActivationReason::Due {
                    break_at,
                    out_for,
                    period,
                    retries,
                },
                _,
            ) => write!(
                f,
                "pod {pod} re-activated by activator {mode}: ejected at {break_at}, {} s out (period {} s, retry {retries})",
                secs(*out_for),
                secs(*period)
            ),
            (
                ActivationReason::AheadOfClock {
                    break_at,
                    ahead,
                    period,
                },
                _,
            ) => write!(
                f,
                "pod {pod} re-activated by activator {mode}: ejected at {break_at}, {} s ahead of the operator's clock (a clock stepped back, or the replica that ejected it ran ahead); how long it has been out cannot be known, so it is not kept out for another period ({} s)",
                secs(*ahead),
                secs(*period)
            ),
            (
                ActivationReason::Exhausted {
                    retries,
                    max_retry_count,
                    paused,
                    max_pause_count,
                },
                action,
            ) => match (self.mode, action) {
                (ActivatorMode::RetryAndPause, Action::Pause) => write!(
                    f,
                    "pod {pod} paused by activator {mode}: ejected {retries} times > maxRetryCount {max_retry_count}; {paused} of at most {max_pause_count} pods paused"
                ),
                (ActivatorMode::RetryAndPause, _) => write!(
                    f,
                    "pod {pod} killed by activator {mode}: ejected {retries} times > maxRetryCount {max_retry_count} and already {paused} paused (maxPauseCount {max_pause_count})"
                ),
                _ => write!(
                    f,
                    "pod {pod} killed by activator {mode}: ejected {retries} times > maxRetryCount {max_retry_count}"
                ),
            },
        }
    }
}

/// How far ahead of the clock a pod's ejection time may be and still be believed: the
/// skew between two replicas' clocks, or a small step back, delays a re-activation by at
/// most this much. Beyond it the ejection time is wrong (see
/// [`ActivationReason::AheadOfClock`]).
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(1);

impl ActivationReason {
    /// Whether the pod's ejection time was ahead of the clock.
    pub fn is_clock_ahead(&self) -> bool {
        matches!(self, ActivationReason::AheadOfClock { .. })
    }
}

/// How far `break_at` is ahead of `now`, when beyond [`CLOCK_SKEW_ALLOWANCE`].
fn ahead_of_clock(break_at: Timestamp, now: Timestamp) -> Option<Duration> {
    let ahead = Duration::try_from(break_at.duration_since(now)).ok()?;
    (ahead > CLOCK_SKEW_ALLOWANCE).then_some(ahead)
}

/// Decides, at `now`, what happens to each pod with `traffic=no`.
///
/// Each pod is handled by the activator of the breaker that ejected it (its
/// `kubervisor/strategy` label) or by the default one. Pods are taken in name order
/// so that the pause budget goes to the same pods whatever the input order.
pub fn plan_activations(spec: &ResolvedSpec, pods: &[PodView], now: Timestamp) -> Vec<Activation> {
    let mut paused = pods
        .iter()
        .filter(|p| p.marks.traffic() == Some(Traffic::Pause) && !p.terminating)
        .count();
    let mut ejected: Vec<&PodView> = pods
        .iter()
        .filter(|p| p.marks.traffic() == Some(Traffic::No) && !p.terminating)
        .collect();
    ejected.sort_by(|a, b| a.name.cmp(&b.name));
    let mut plan = Vec::new();
    for pod in ejected {
        // Unreadable marks: the pod is reported unknown and left alone.
        let (Some(Ok(break_at)), Some(retries)) = (&pod.marks.break_at, pod.marks.retries()) else {
            continue;
        };
        let activator = spec.activator_for(pod.marks.strategy.as_deref());
        let exhausted = retries > activator.max_retry_count;
        let exhausted_reason = |paused| ActivationReason::Exhausted {
            retries,
            max_retry_count: activator.max_retry_count,
            paused,
            max_pause_count: activator.max_pause_count,
        };
        let decision = match activator.mode {
            ActivatorMode::RetryAndKill if exhausted => Some((Action::Kill, exhausted_reason(0))),
            ActivatorMode::RetryAndPause
                if exhausted && paused < activator.max_pause_count as usize =>
            {
                paused += 1;
                Some((Action::Pause, exhausted_reason(paused)))
            }
            ActivatorMode::RetryAndPause if exhausted => {
                Some((Action::Kill, exhausted_reason(paused)))
            }
            _ => match ahead_of_clock(*break_at, now) {
                Some(ahead) => Some((
                    Action::Activate,
                    ActivationReason::AheadOfClock {
                        break_at: *break_at,
                        ahead,
                        period: activator.period,
                    },
                )),
                None => {
                    let wait = wait_before_activation(activator, retries);
                    (now >= add(*break_at, wait)).then_some((
                        Action::Activate,
                        ActivationReason::Due {
                            break_at: *break_at,
                            out_for: wait,
                            period: activator.period,
                            retries,
                        },
                    ))
                }
            },
        };
        if let Some((action, reason)) = decision {
            plan.push(Activation {
                pod: pod.name.clone(),
                action,
                mode: activator.mode,
                reason,
            });
        }
    }
    plan
}

/// When the activator acts on one ejected pod, judged at `now`: at once (its ejection
/// time) when a retry mode has exhausted its retries, else once its time out of traffic
/// is over; `now` when its ejection time is ahead of the clock beyond the allowance.
/// `None` for a pod that is not ejected or whose marks cannot be read.
pub fn due_at(spec: &ResolvedSpec, pod: &PodView, now: Timestamp) -> Option<Timestamp> {
    if pod.marks.traffic() != Some(Traffic::No) || pod.terminating {
        return None;
    }
    let Some(Ok(break_at)) = &pod.marks.break_at else {
        return None;
    };
    let retries = pod.marks.retries()?;
    if ahead_of_clock(*break_at, now).is_some() {
        return Some(now);
    }
    let activator = spec.activator_for(pod.marks.strategy.as_deref());
    let exhausted =
        activator.mode != ActivatorMode::Periodic && retries > activator.max_retry_count;
    if exhausted {
        Some(*break_at)
    } else {
        Some(add(*break_at, wait_before_activation(activator, retries)))
    }
}

/// The earliest moment at which some ejected pod is due, possibly already past, so that
/// the activator wakes up exactly then and sleeps while no pod is out of traffic.
pub fn earliest_due(spec: &ResolvedSpec, pods: &[PodView], now: Timestamp) -> Option<Timestamp> {
    pods.iter().filter_map(|pod| due_at(spec, pod, now)).min()
}

/// The earliest moment, after `now`, at which some ejected pod becomes due.
pub fn next_due(spec: &ResolvedSpec, pods: &[PodView], now: Timestamp) -> Option<Timestamp> {
    pods.iter()
        .filter_map(|pod| due_at(spec, pod, now))
        .filter(|due| *due > now)
        .min()
}

/// How long a pod ejected `retries` times stays out: one period, or, in retry modes,
/// one period per ejection (never less than one), capped by `maxEjectionTime`.
pub fn wait_before_activation(activator: &ResolvedActivator, retries: u32) -> Duration {
    let waits = match activator.mode {
        ActivatorMode::Periodic => 1,
        _ => retries.max(1),
    };
    let wait = activator.period.saturating_mul(waits);
    activator
        .max_ejection_time
        .map_or(wait, |cap| wait.min(cap))
}

/// A pod back in traffic whose past ejections are forgotten: its retry count goes to 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Forgotten {
    pub pod: String,
    pub retries: u32,
    pub forget_after: Duration,
}

impl fmt::Display for Forgotten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pod {} kept traffic {} s after its re-activation: its {} past ejection(s) are forgotten (forgetAfter)",
            self.pod,
            secs(self.forget_after),
            self.retries
        )
    }
}

/// When a serving pod's past ejections are forgotten, with its count and `forgetAfter`:
/// `forgetAfter` after its time out of traffic ended. `None` without `forgetAfter`, or for
/// a pod out of traffic, with no ejection, or with unreadable marks.
fn forget_at(spec: &ResolvedSpec, pod: &PodView) -> Option<(Timestamp, u32, Duration)> {
    if pod.marks.traffic() != Some(Traffic::Yes) || pod.terminating {
        return None;
    }
    let retries = pod.marks.retries().filter(|r| *r > 0)?;
    let Some(Ok(break_at)) = &pod.marks.break_at else {
        return None;
    };
    let activator = spec.activator_for(pod.marks.strategy.as_deref());
    let forget_after = activator.forget_after?;
    let back_at = add(*break_at, wait_before_activation(activator, retries));
    Some((add(back_at, forget_after), retries, forget_after))
}

/// The pods with traffic whose activator has `forgetAfter` and that have served that long
/// since their time out of traffic ended, without a new ejection; in name order.
pub fn forget_retries(spec: &ResolvedSpec, pods: &[PodView], now: Timestamp) -> Vec<Forgotten> {
    let mut forgotten: Vec<Forgotten> = pods
        .iter()
        .filter_map(|pod| {
            let (at, retries, forget_after) = forget_at(spec, pod)?;
            (now >= at).then(|| Forgotten {
                pod: pod.name.clone(),
                retries,
                forget_after,
            })
        })
        .collect();
    forgotten.sort_by(|a, b| a.pod.cmp(&b.pod));
    forgotten
}

/// When the next retry count is due to be forgotten.
pub fn next_forget(spec: &ResolvedSpec, pods: &[PodView]) -> Option<Timestamp> {
    pods.iter()
        .filter_map(|pod| forget_at(spec, pod).map(|(at, _, _)| at))
        .min()
}

pub(crate) fn add(at: Timestamp, wait: Duration) -> Timestamp {
    let wait = SignedDuration::try_from(wait).unwrap_or(SignedDuration::MAX);
    at.saturating_add(wait).unwrap_or(Timestamp::MAX)
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.2}")
    }
}

#[cfg(test)]
mod tests {

    use kubervisor_api::{ResolvedActivator, ResolvedSpec};

    use super::*;
    use crate::pod::fixtures::{ejected, pod};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn spec(mode: ActivatorMode, max_retry_count: u32, max_pause_count: u32) -> ResolvedSpec {
        ResolvedSpec {
            service: "web".into(),
            breakers: vec![],
            default_activator: ResolvedActivator {
                mode,
                period: Duration::from_secs(10),
                max_retry_count,
                max_pause_count,
                forget_after: None,
                max_ejection_time: None,
                kill_method: Default::default(),
            },
            dry_run: false,
            traffic_control: Default::default(),
        }
    }

    fn actions(plan: &[Activation]) -> Vec<(&str, Action)> {
        plan.iter().map(|a| (a.pod.as_str(), a.action)).collect()
    }

    #[test]
    fn periodic_puts_the_pod_back_once_the_period_has_passed() {
        let spec = spec(ActivatorMode::Periodic, 3, 1);
        let pods = [ejected("a", "b", t(0), 7)];
        assert!(plan_activations(&spec, &pods, t(9)).is_empty());
        let plan = plan_activations(&spec, &pods, t(10));
        assert_eq!(actions(&plan), [("a", Action::Activate)]);
        assert!(
            plan[0]
                .to_string()
                .contains("re-activated by activator periodic"),
            "{}",
            plan[0]
        );
    }

    #[test]
    fn retry_and_kill_waits_retry_count_periods_then_kills_past_max() {
        let spec = spec(ActivatorMode::RetryAndKill, 3, 1);
        let pods = [ejected("a", "b", t(0), 3)];
        assert!(plan_activations(&spec, &pods, t(29)).is_empty());
        assert_eq!(
            actions(&plan_activations(&spec, &pods, t(30))),
            [("a", Action::Activate)]
        );
        let pods = [ejected("a", "b", t(0), 4)];
        let plan = plan_activations(&spec, &pods, t(0));
        assert_eq!(actions(&plan), [("a", Action::Kill)]);
        assert!(
            plan[0]
                .to_string()
                .contains("ejected 4 times > maxRetryCount 3"),
            "{}",
            plan[0]
        );
    }

    #[test]
    fn retry_and_pause_pauses_until_max_pause_count_then_kills() {
        let spec = spec(ActivatorMode::RetryAndPause, 1, 1);
        let pods = [ejected("a", "b", t(0), 2), ejected("c", "b", t(0), 2)];
        let plan = plan_activations(&spec, &pods, t(0));
        assert_eq!(actions(&plan), [("a", Action::Pause), ("c", Action::Kill)]);
        let mut pods = pods.to_vec();
        pods.push(pod("z", Traffic::Pause));
        let plan = plan_activations(&spec, &pods, t(0));
        assert_eq!(actions(&plan), [("a", Action::Kill), ("c", Action::Kill)]);
        assert!(
            plan[0]
                .to_string()
                .contains("already 1 paused (maxPauseCount 1)"),
            "{}",
            plan[0]
        );
    }

    #[test]
    fn retry_modes_never_reactivate_before_one_period_even_without_retry_count() {
        let spec = spec(ActivatorMode::RetryAndKill, 3, 1);
        let mut p = ejected("a", "b", t(0), 0);
        p.marks.retry_count = None;
        assert!(plan_activations(&spec, std::slice::from_ref(&p), t(9)).is_empty());
        assert_eq!(
            actions(&plan_activations(&spec, &[p], t(10))),
            [("a", Action::Activate)]
        );
    }

    #[test]
    fn a_breakers_own_activator_handles_the_pods_it_ejected() {
        let mut spec = spec(ActivatorMode::Periodic, 3, 1);
        spec.breakers.push(kubervisor_api::ResolvedBreaker {
            name: "slow".into(),
            evaluation_period: Duration::from_secs(5),
            min_pods_available_count: 1,
            min_pods_available_ratio: 0,
            detection: kubervisor_api::Detection::Custom(kubervisor_api::CustomRule {
                url: "x".into(),
            }),
            panic_threshold_percent: 0,
            max_ejections_per_evaluation: None,
            dry_run: false,
            activator: Some(ResolvedActivator {
                mode: ActivatorMode::RetryAndKill,
                period: Duration::from_secs(60),
                max_retry_count: 0,
                max_pause_count: 0,
                forget_after: None,
                max_ejection_time: None,
                kill_method: Default::default(),
            }),
        });
        let pods = [
            ejected("by-slow", "slow", t(0), 1),
            ejected("by-other", "other", t(0), 1),
        ];
        let plan = plan_activations(&spec, &pods, t(10));
        assert_eq!(
            actions(&plan),
            [("by-other", Action::Activate), ("by-slow", Action::Kill)]
        );
    }

    #[test]
    fn next_due_is_the_earliest_future_activation() {
        let spec = spec(ActivatorMode::RetryAndKill, 3, 1);
        let pods = [
            ejected("a", "b", t(0), 2),
            ejected("b", "b", t(5), 1),
            pod("c", Traffic::Yes),
        ];
        // a is due at 0 + 2 × 10, b at 5 + 10.
        assert_eq!(next_due(&spec, &pods, t(5)), Some(t(15)));
        assert_eq!(next_due(&spec, &pods, t(15)), Some(t(20)));
        assert_eq!(next_due(&spec, &pods, t(20)), None);
    }

    #[test]
    fn unreadable_marks_and_terminating_pods_are_left_alone() {
        let spec = spec(ActivatorMode::Periodic, 3, 1);
        let mut bad_time = ejected("a", "b", t(0), 1);
        bad_time.marks.break_at = Some(Err("bad".into()));
        let mut bad_retry = ejected("b", "b", t(0), 1);
        bad_retry.marks.retry_count = Some(Err("bad".into()));
        let mut going = ejected("c", "b", t(0), 1);
        going.terminating = true;
        let mut missing = ejected("d", "b", t(0), 1);
        missing.marks.break_at = None;
        let serving = pod("e", Traffic::Yes);
        assert!(
            plan_activations(
                &spec,
                &[bad_time, bad_retry, going, missing, serving],
                t(1000)
            )
            .is_empty()
        );
    }

    #[test]
    fn retries_are_forgotten_after_serving_forget_after_since_the_time_out_ended() {
        let mut spec = spec(ActivatorMode::RetryAndKill, 5, 1);
        spec.default_activator.forget_after = Some(Duration::from_secs(100));
        // Ejected twice at 0: out until 20, back since then.
        let mut back = ejected("a", "b", t(0), 2);
        back.marks.traffic = Some(Ok(Traffic::Yes));
        let pods = [
            back,
            ejected("out", "b", t(0), 2),
            pod("fresh", Traffic::Yes),
        ];
        assert!(forget_retries(&spec, &pods, t(119)).is_empty());
        let forgotten = forget_retries(&spec, &pods, t(120));
        assert_eq!(forgotten.len(), 1);
        assert_eq!(forgotten[0].pod, "a");
        assert_eq!(next_forget(&spec, &pods), Some(t(120)));
        spec.default_activator.forget_after = None;
        assert!(forget_retries(&spec, &pods, t(10_000)).is_empty());
    }

    #[test]
    fn an_ejection_time_ahead_of_the_clock_ends_at_once_and_says_why() {
        let spec = spec(ActivatorMode::RetryAndKill, 3, 1);
        // Ejected "at" 3600: written by a clock an hour ahead, or read after a step back.
        let pods = [
            ejected("ahead", "b", t(3600), 2),
            ejected("skewed", "b", t(1), 1),
            ejected("fresh", "b", t(0), 1),
        ];
        let plan = plan_activations(&spec, &pods, t(0));
        assert_eq!(actions(&plan), [("ahead", Action::Activate)]);
        assert!(plan[0].reason.is_clock_ahead());
        assert!(
            plan[0]
                .to_string()
                .contains("3600 s ahead of the operator's clock"),
            "{}",
            plan[0]
        );
        // Within the allowance the ejection time is believed: out for its period from then.
        assert_eq!(due_at(&spec, &pods[1], t(0)), Some(t(11)));
        assert_eq!(due_at(&spec, &pods[0], t(0)), Some(t(0)));
        assert_eq!(earliest_due(&spec, &pods, t(0)), Some(t(0)));
        assert!(plan_activations(&spec, &pods[1..2], t(10)).is_empty());
    }

    #[test]
    fn max_ejection_time_caps_the_wait_of_retry_modes() {
        let mut spec = spec(ActivatorMode::RetryAndKill, 10, 1);
        spec.default_activator.max_ejection_time = Some(Duration::from_secs(25));
        // Ejected 5 times: 50 s without the cap, 25 s with it.
        let pods = [ejected("a", "b", t(0), 5)];
        assert!(plan_activations(&spec, &pods, t(24)).is_empty());
        assert_eq!(
            actions(&plan_activations(&spec, &pods, t(25))),
            [("a", Action::Activate)]
        );
    }
}
