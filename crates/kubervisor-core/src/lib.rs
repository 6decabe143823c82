//! Kubervisor's decision engine: pure functions from plain data and a clock to
//! decisions with reasons. No I/O, no runtime: everything here is tested directly.
//!
//! - [`detect`] turns query results into per-pod findings (anomalous or not, and why);
//! - [`breaker`] chooses which anomalous pods lose traffic without going under the minimum;
//! - [`activator`] chooses which ejected pods come back, are paused or killed;
//! - [`safety`] gives ejected pods back early when outside losses break the floor;
//! - [`stats`] holds the fleet arithmetic (mean, population stdev, median, MAD, slope);
//! - [`status`] counts pods by traffic state.

pub mod activator;
pub mod breaker;
pub mod detect;
mod pod;
pub mod safety;
pub mod stats;
pub mod status;

pub use pod::{NotCandidate, PodView};
