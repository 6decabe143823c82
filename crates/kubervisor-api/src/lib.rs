//! The `KubervisorService` custom resource (`kubervisor.k8s.io/v1alpha1`) and the
//! label/annotation contract that every Kubervisor component shares on pods.
//!
//! Field names follow the original operator's JSON exactly, so manifests written for
//! it are accepted unchanged. Optional fields stay optional in the types; defaults are
//! applied by [`KubervisorServiceSpec::defaulted`] so a stored object is never rewritten
//! behind the user's back.

pub mod address;
mod crd;
mod defaults;
pub mod manifest;
pub mod patch;
pub mod pod;
mod types;
mod validate;

pub use crd::{CRD_NAME, crd, crd_yaml};
pub use defaults::*;
pub use types::*;
pub use validate::{FieldError, ValidationErrors};

/// API group of the custom resource.
pub const GROUP: &str = "kubervisor.k8s.io";
/// API version of the custom resource.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` string of the custom resource.
pub const API_VERSION: &str = "kubervisor.k8s.io/v1alpha1";
/// Kind of the custom resource.
pub const KIND: &str = "KubervisorService";
