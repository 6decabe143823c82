//! End to end: kubesim, the operator in-process, and (for the Prometheus scenarios) a
//! real Prometheus scraping the simulated fleet.

mod faults;
mod harness;
mod safety;
mod scenarios;
