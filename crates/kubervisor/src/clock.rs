//! The operator's clock: the wall-clock time it decides by and writes into pods
//! (`breakAt`), statuses, events and the Lease, counted on the monotonic clock.
//!
//! Between two readings the clock advances as the monotonic clock does; at each reading
//! it moves towards the system clock by at most [`SLEW`] of the time elapsed. So a step
//! of the system clock (an NTP step, a resumed VM, a hand-set date) is followed
//! gradually, as time daemons slew: the durations the operator measures (a pod's time
//! out of traffic) stretch or shrink by at most 5 % meanwhile, the clock never goes back,
//! and an hour's step is caught up in 20 hours. Without it, a step back of an hour keeps
//! every ejected pod out for an hour more, and a step forward ends every ejection at once
//! and writes ejection times an hour ahead for other replicas to read.

use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use tracing::{info, warn};

/// How much faster or slower than the monotonic clock the operator's clock may run while
/// it catches up with the system clock.
pub const SLEW: f64 = 0.05;

/// A gap to the system clock beyond this is a step of the system clock, and logged.
pub const STEP: Duration = Duration::from_secs(1);

/// The time now, on the process's clock.
pub fn now() -> Timestamp {
    static CLOCK: LazyLock<Clock> = LazyLock::new(Clock::new);
    CLOCK.now()
}

/// A clock following the system clock at a bounded rate.
pub struct Clock {
    last: Mutex<Reading>,
}

#[derive(Clone, Copy, Debug)]
struct Reading {
    mono: Instant,
    at: Timestamp,
    /// Whether a step is being caught up (it was logged).
    stepped: bool,
}

impl Clock {
    /// A clock that starts at the system clock's time.
    pub fn new() -> Clock {
        Clock {
            last: Mutex::new(Reading {
                mono: Instant::now(),
                at: Timestamp::now(),
                stepped: false,
            }),
        }
    }

    pub fn now(&self) -> Timestamp {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        // Both clocks read under the lock, so that readings are in order.
        let mono = Instant::now();
        let system = Timestamp::now();
        let at = follow(last.at, mono.saturating_duration_since(last.mono), system);
        let gap = system.duration_since(at);
        let stepped = gap.unsigned_abs() > STEP;
        if stepped && !last.stepped {
            warn!(
                gap_seconds = gap.as_secs_f64(),
                "the system clock stepped {:.1} s away from the operator's clock: the operator follows it at {} % of the time that passes, so that the durations it measures stay true",
                gap.as_secs_f64(),
                SLEW * 100.0
            );
        } else if !stepped && last.stepped {
            info!("the operator's clock caught up with the system clock");
        }
        *last = Reading { mono, at, stepped };
        at
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The clock's next time: `last` advanced by `elapsed` (monotonic), then moved towards
/// `system` by at most [`SLEW`] × `elapsed`.
pub fn follow(last: Timestamp, elapsed: Duration, system: Timestamp) -> Timestamp {
    let elapsed = SignedDuration::try_from(elapsed).unwrap_or(SignedDuration::MAX);
    let predicted = last.saturating_add(elapsed).unwrap_or(Timestamp::MAX);
    let room = elapsed.mul_f64(SLEW);
    let correction = system.duration_since(predicted).clamp(-room, room);
    predicted.saturating_add(correction).unwrap_or(predicted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(1_800_000_000_000 + ms).unwrap()
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn without_a_step_it_is_the_system_clock() {
        assert_eq!(follow(t(0), ms(1_000), t(1_000)), t(1_000));
        // Small disagreements (the two clocks are not read at one instant) are taken in.
        assert_eq!(follow(t(0), ms(1_000), t(1_020)), t(1_020));
    }

    #[test]
    fn a_step_back_of_an_hour_slows_the_clock_by_five_percent_never_more() {
        let mut at = t(0);
        // The system clock goes back an hour; ten seconds pass, read every 100 ms.
        for i in 1..=100 {
            at = follow(at, ms(100), t(i * 100 - 3_600_000));
        }
        assert_eq!(at, t(9_500));
    }

    #[test]
    fn a_step_forward_of_an_hour_is_caught_up_in_twenty_hours() {
        let hour = 3_600_000;
        let mut at = t(0);
        for i in 1..=19 {
            at = follow(at, ms(hour as u64), t(i * hour + hour));
            assert!(at < t(i * hour + hour), "caught up after {i} hours");
        }
        assert_eq!(follow(at, ms(hour as u64), t(21 * hour)), t(21 * hour));
    }

    proptest::proptest! {
        /// Whatever the system clock does, the operator's clock never goes back and runs
        /// within 5 % of the monotonic clock; and it is the system clock again once
        /// enough time has passed without another step.
        #[test]
        fn the_clock_never_goes_back_and_durations_stay_within_the_slew(
            readings in proptest::collection::vec((0u64..20_000, -7_200_000i64..7_200_000), 1..60),
        ) {
            let mut at = t(0);
            let mut mono = 0i64;
            let mut offset = 0i64;
            for (elapsed, step) in readings {
                mono += elapsed as i64;
                offset = step;
                let next = follow(at, ms(elapsed), t(mono + offset));
                let advanced = next.duration_since(at).as_millis() as f64;
                let elapsed = elapsed as f64;
                proptest::prop_assert!(advanced >= elapsed * (1.0 - SLEW) - 1.0, "advanced {} ms in {} ms", advanced, elapsed);
                proptest::prop_assert!(advanced <= elapsed * (1.0 + SLEW) + 1.0, "advanced {} ms in {} ms", advanced, elapsed);
                at = next;
            }
            let gap = t(mono + offset).duration_since(at).unsigned_abs();
            let enough = gap.div_f64(SLEW) + ms(1_000);
            let system = t(mono + offset + enough.as_millis() as i64);
            proptest::prop_assert_eq!(follow(at, enough, system), system);
        }
    }
}
