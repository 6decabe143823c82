//! Kubervisor, the operator: metric sources, the cluster index, per-resource loops,
//! effects on pods, the HTTP endpoint and the command line.

pub mod backtest;
pub mod cli;
pub mod clock;
#[cfg(feature = "demo")]
pub mod demo;
pub mod effects;
#[cfg(feature = "demo")]
pub mod harness;
pub mod index;
pub mod interest;
pub mod labels;
pub mod leader;
pub mod operator;
pub mod plan;
pub mod source;
pub mod task;
pub mod telemetry;
pub mod watch;
