//! Real components the demo and the tests start: a Prometheus process.

pub mod prometheus;

pub use prometheus::{HarnessError, PrometheusOptions, PrometheusProcess};
