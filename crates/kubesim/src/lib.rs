//! kubesim: a Kubernetes API emulator with a simulated workload.
