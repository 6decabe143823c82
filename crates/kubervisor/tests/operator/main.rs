//! End to end: kubesim, the operator in-process, and (for the Prometheus scenarios) a
//! real Prometheus scraping the simulated fleet.

mod chaos;
mod faults;
mod harness;
mod monitor;
mod safety;
mod scenarios;
