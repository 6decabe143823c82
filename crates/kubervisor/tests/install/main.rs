//! Installing and operating Kubervisor as cluster admins do: `deploy/` with kubectl, the
//! Helm chart with helm, and the RBAC they grant, checked by the real authorizer.

mod admission;
mod chart;
mod deploy;
mod monitoring;
mod rbac;
mod tools;
