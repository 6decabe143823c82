//! `kubectl kubervisor`: list and describe KubervisorServices, switch the traffic gating
//! of their Service on (`activate`) and off (`deactivate`), and act on one pod by hand
//! (`eject`, `restore`, `pause`, `unpause`).
//!
//! The views and decisions (`list`, `describe`, `gate`, `actions`, `format`) are pure
//! functions of the objects read, so they are tested without a cluster; `commands` does
//! the reading and the writes (JSON Patches guarded by `test` operations, and an Event
//! recording each manual action).

pub mod actions;
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
