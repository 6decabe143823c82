//! End to end: kubesim, the operator in-process, and (for the Prometheus scenarios) a
//! real Prometheus scraping the simulated fleet, or the operator itself for the dashboard
//! and the alerts.

mod chaos;
mod faults;
mod harness;
mod monitoring;
mod safety;
mod scenarios;
