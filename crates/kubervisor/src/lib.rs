//! Kubervisor, the operator: metric sources, the cluster index, per-resource loops,
//! effects on pods, the HTTP endpoint and the command line.

pub mod cli;
pub mod harness;
pub mod leader;
pub mod source;
pub mod telemetry;
