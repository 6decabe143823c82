//! `kubectl kubervisor`: list and describe KubervisorServices, and switch the traffic
//! gating of their Service on (`activate`) and off (`deactivate`).
//!
//! The views (`list`, `describe`, `gate`, `format`) are pure functions of the objects
//! read, so they are tested without a cluster; `commands` does the reading and the one
//! write (a JSON Patch of the Service selector, guarded by a `test`).

pub mod cli;
pub mod commands;
pub mod connect;
pub mod describe;
pub mod error;
pub mod format;
pub mod gate;
pub mod list;

pub use cli::Cli;
pub use commands::{Output, run};
pub use error::PluginError;
